"""Shared helpers: real redis-server processes on free loopback ports, and
the Rust peer (`examples/interop_peer.rs`) for interop tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from resilient_cache import CacheFactoryConfig, CacheService

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server of this test: started on a free port, stopped by its pid."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is required by these tests (apt-get install -y redis-server)")
        self.exe = exe
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def command(self, *args: str | bytes) -> bytes:
        """One command in RESP; the raw reply (enough for simple replies)."""
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            data = s.recv(1 << 20)
            if data.startswith(b"$"):
                size = int(data[1 : data.index(b"\r\n")])
                need = data.index(b"\r\n") + 2 + size + 2
                while size >= 0 and len(data) < need:
                    data += s.recv(1 << 20)
            return data

    def get_raw(self, key: str) -> bytes | None:
        reply = self.command("GET", key)
        if reply.startswith(b"$-1"):
            return None
        head = reply.index(b"\r\n")
        size = int(reply[1:head])
        return reply[head + 2 : head + 2 + size]

    def set_raw(self, key: str, value: bytes) -> None:
        assert self.command("SET", key, value) == b"+OK\r\n"

    def config(self, **overrides) -> CacheFactoryConfig:
        kwargs = dict(l2_host="127.0.0.1", l2_port=self.port, l2_socket_timeout=1, l2_connect_timeout=1)
        kwargs.update(overrides)
        return CacheFactoryConfig(**kwargs)

    def settings(self) -> dict[str, str]:
        return {"CACHE_REDIS_HOST": "127.0.0.1", "CACHE_REDIS_PORT": str(self.port)}


@pytest.fixture
def redis():
    server = RedisServer()
    yield server
    if server.proc is not None:
        server.thaw()
    server.kill()


@pytest.fixture
def service(redis):
    return CacheService(redis.config())


def make_cache(service: CacheService, prefix: str = "t", **kwargs):
    args = dict(l2_key_prefix=prefix, l2_ttl=600, l2_enabled=True, l1_enabled=True, l1_maxsize=1000, l1_ttl=60)
    args.update(kwargs)
    return service.create_cache(**args)


def eventually(check, timeout: float = 5.0, what: str = "condition"):
    """Polls `check` until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


class Peer:
    """The Rust instance: `interop_peer NAMESPACE`, one command per line."""

    def __init__(self, redis: RedisServer, namespace: str) -> None:
        exe = os.environ.get("RESILIENT_CACHE_PEER") or str(REPO / "target" / "debug" / "examples" / "interop_peer")
        if not Path(exe).exists():
            raise RuntimeError(
                f"{exe} not found: build it with `cargo build -p resilient-cache --example interop_peer`"
            )
        env = dict(os.environ, **redis.settings())
        self.proc = subprocess.Popen(
            [exe, namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1
        )

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Rust peer exited")
        return line.rstrip("\n")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def peer_factory(redis):
    peers: list[Peer] = []

    def make(namespace: str) -> Peer:
        p = Peer(redis, namespace)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()
