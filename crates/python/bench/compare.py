"""This package against the original resilient-cache, in one process, on one redis-server.

    # the original's source (it is not on PyPI), and its dependencies
    git clone https://github.com/dclobato/resilient-cache /tmp/original
    .venv/bin/pip install valkey cachetools
    # this package, release build, and the Rust peer
    (cd crates/python && VIRTUAL_ENV=$PWD/../../.venv PATH=$PWD/../../.venv/bin:$PATH maturin develop --release)
    cargo build --release -p resilient-cache --example interop_peer
    .venv/bin/python crates/python/bench/compare.py --original /tmp/original/src --json compare.json

Both packages are importable as ``resilient_cache``: this one is imported
first, its modules renamed in ``sys.modules``, then the original imported
under the name it expects. Each figure is measured for both, one after the
other, with the same server, keys and values; throughputs are the median of
``--repeats`` runs of ``--seconds`` each. The frozen-Redis figure is the
longest single call while the server is stopped with SIGSTOP, both caches
configured with a 1 s socket timeout (the original's settings are whole
seconds). The interop figures use the Rust peer (``examples/interop_peer``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[3]
VALUE = {"id": 42, "name": "Ada Lovelace", "roles": ["admin", "dev"], "active": True, "score": 9.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is required (apt-get install -y redis-server)")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def load_both(original_src: str):
    import resilient_cache as ours

    for name in [n for n in sys.modules if n == "resilient_cache" or n.startswith("resilient_cache.")]:
        sys.modules["_ours_" + name] = sys.modules.pop(name)
    sys.path.insert(0, original_src)
    original = importlib.import_module("resilient_cache")
    if getattr(original, "__file__", "").startswith(str(HERE.parents[1])):
        sys.exit("--original must point at the original package's src directory")
    return ours, original


def make(pkg, port: int, prefix: str, *, l1: bool, socket_timeout: int = 5, threshold: int = 5):
    import logging

    logging.getLogger("resilient_cache").setLevel(logging.ERROR)
    logger = logging.getLogger("bench-quiet")
    logger.setLevel(logging.ERROR)
    config = pkg.CacheFactoryConfig(
        l2_host="127.0.0.1",
        l2_port=port,
        l2_socket_timeout=socket_timeout,
        l2_connect_timeout=socket_timeout,
        serializer="json",
        circuit_breaker_threshold=threshold,
        logger=logger,
    )
    service = pkg.CacheService(config, logger=logger)
    return service.create_cache(
        l2_key_prefix=prefix,
        l2_ttl=600,
        l2_enabled=True,
        l1_enabled=l1,
        l1_maxsize=10_000,
        l1_ttl=300,
    )


def rate(fn, seconds: float, threads: int = 1) -> float:
    """Calls per second of `fn(i)` over `seconds`, from `threads` threads."""
    stop = threading.Event()
    counts = [0] * threads

    def run(t: int) -> None:
        n = 0
        while not stop.is_set():
            for _ in range(100):
                fn(n)
                n += 1
        counts[t] = n

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def median_rate(fn, args) -> float:
    return statistics.median(rate(fn, args.seconds, args.threads_for) for _ in range(args.repeats))


def both(ours, original, build, args, threads: int = 1):
    results = []
    for pkg in (ours, original):
        fn = build(pkg)
        args.threads_for = threads
        results.append(round(median_rate(fn, args)))
    return results


def frozen_max_call_ms(pkg, port: int, proc: subprocess.Popen, prefix: str, calls: int) -> float:
    cache = make(pkg, port, prefix, l1=False, socket_timeout=1, threshold=calls + 10)
    cache.set("k", VALUE)
    os.kill(proc.pid, signal.SIGSTOP)
    worst = 0.0
    try:
        for i in range(calls):
            start = time.perf_counter()
            cache.get("k") if i % 2 == 0 else cache.set("k", VALUE)
            worst = max(worst, (time.perf_counter() - start) * 1000)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return round(worst, 1)


class Peer:
    def __init__(self, exe: str, port: int, namespace: str) -> None:
        env = dict(os.environ, CACHE_REDIS_HOST="127.0.0.1", CACHE_REDIS_PORT=str(port))
        self.proc = subprocess.Popen([exe, namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        return self.proc.stdout.readline().rstrip("\n")

    def close(self) -> None:
        self.send("quit")
        self.proc.wait(timeout=5)


def p99(samples: list) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def interop(ours, original, port: int, peer_exe: str, rounds: int) -> dict:
    peer = Peer(peer_exe, port, "shared")
    py = make(ours, port, "shared", l1=True)
    orig = make(original, port, "shared", l1=False)
    try:
        shared = True
        py.set("py", VALUE)
        shared &= json.loads(peer.ask("get py")[len("value "):]) == VALUE
        shared &= peer.ask("set rs " + json.dumps(VALUE)) == "ok"
        shared &= py.get("rs") == VALUE and orig.get("rs") == VALUE
        orig.set("orig", VALUE)
        shared &= json.loads(peer.ask("get orig")[len("value "):]) == VALUE and py.get("orig") == VALUE

        # Python write -> Rust L1 evicted (the peer reports its eviction event).
        to_rust = []
        for i in range(rounds):
            assert peer.ask("watch k") == "ready"
            start = time.perf_counter_ns()
            py.set("k", i)
            if peer.read() != "evicted":
                raise SystemExit("the Rust peer's L1 was not invalidated")
            to_rust.append((time.perf_counter_ns() - start) / 1000)
        # Rust write -> Python L1 evicted (polled until Python reads the new
        # value; each poll sleeps 20 us, so that a spinning poller does not
        # keep the peer, Redis and the runtime off a CPU: on 2 cores that
        # cost a scheduler tick, 4 ms, per round).
        to_python = []
        for i in range(rounds):
            py.set("j", -1)
            assert py.get("j") == -1
            start = time.perf_counter_ns()
            peer.send(f"set j {i}")
            while py.get("j") != i:
                time.sleep(0.00002)
            to_python.append((time.perf_counter_ns() - start) / 1000)
            assert peer.read() == "ok"
        return {
            "rust_python_shared_namespace": bool(shared),
            "python_to_rust_invalidation_p99_us": round(p99(to_rust)),
            "rust_to_python_invalidation_p99_us": round(p99(to_python)),
            "cross_language_invalidation_p99_us": round(max(p99(to_rust), p99(to_python))),
        }
    finally:
        peer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", required=True, help="the original package's src directory")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frozen-calls", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=300, help="interop invalidation rounds")
    ap.add_argument("--peer", default=None, help="interop_peer binary (default: target/release, then target/debug)")
    args = ap.parse_args()
    peer = args.peer or next(
        (str(p) for p in (REPO / "target/release/examples/interop_peer", REPO / "target/debug/examples/interop_peer") if p.exists()),
        None,
    )
    if peer is None:
        sys.exit("build the peer first: cargo build --release -p resilient-cache --example interop_peer")

    ours, original = load_both(args.original)
    port = free_port()
    proc = start_redis(port)
    try:
        out = {}

        def l1_hit(pkg):
            c = make(pkg, port, "l1-" + pkg.__name__, l1=True)
            c.set("k", VALUE)
            return lambda _: c.get("k")

        def l2_hit(pkg):
            c = make(pkg, port, "l2-" + pkg.__name__, l1=False)
            c.set("k", VALUE)
            return lambda _: c.get("k")

        def set_op(pkg):
            c = make(pkg, port, "set-" + pkg.__name__, l1=True)
            return lambda i: c.set(f"k{i % 1000}", VALUE)

        out["l1_hit_ops"] = both(ours, original, l1_hit, args)
        out["l2_hit_ops"] = both(ours, original, l2_hit, args)
        out["l2_hit_ops_16_threads"] = both(ours, original, l2_hit, args, threads=16)
        out["set_ops"] = both(ours, original, set_op, args)
        out.update(interop(ours, original, port, peer, args.rounds))
        out["frozen_redis_max_call_ms"] = [
            frozen_max_call_ms(ours, port, proc, "frz-ours", args.frozen_calls),
            frozen_max_call_ms(original, port, proc, "frz-orig", args.frozen_calls),
        ]
        out["operation_timeout_ms"] = 1000
        ratios = {k: round(v[0] / v[1], 2) for k, v in out.items() if k.endswith("_ops") or k.endswith("threads")}
        out["ratios"] = ratios
    finally:
        proc.kill()
        proc.wait()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
