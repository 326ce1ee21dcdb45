"""Threads hammering one cache; a forked child using it."""

from __future__ import annotations

import os
import threading
import time

from resilient_cache import CacheService

from conftest import make_cache


def wait_for_child(pid: int, hung: str) -> int:
    """The child's wait status; a child still running after 60 s (stuck on
    its parent's runtime, or on a lock) is killed and fails the test with `hung`."""
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(hung)
        time.sleep(0.05)


def test_threads_hammering_one_cache(redis, service):
    c = make_cache(service, "ham", l1_maxsize=100)  # small L1: evictions and L2 reads too
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(500):
                own = f"t{n}:{i % 50}"
                c.set(own, [n, i])
                got = c.get(own)
                # Our own key: only we write it, so we read what we wrote.
                assert got == [n, i], (own, got)
                c.set("shared", n)
                assert c.get("shared") in range(16)
                if i % 7 == 0:
                    c.delete(own)
                    assert c.get(own) is None
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = c.get_stats()
    assert stats["errors"]["decode"] == 0 and stats["circuit_breaker"]["state"] == "closed"
    assert stats["l1"]["hits"] > 0 and stats["l2_hits"] + stats["l2_misses"] > 0


def test_a_forked_child_builds_its_own_runtime_and_connections(redis):
    service = CacheService(redis.config())
    c = make_cache(service, "fork", l1_ttl=1)
    c.set("from-parent", "p")
    parent_id = c.get_stats()["backplane"]["instance_id"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never raise
        code = 1
        failed = []
        try:
            os.close(read)
            stats = c.get_stats()
            if stats["backplane"]["instance_id"] == parent_id:
                failed.append("same service")
            if stats["l1"]["size"] != 0:
                failed.append("inherited L1")
            if c.get("from-parent") != "p":  # from L2, over the child's own connection
                failed.append("L2 read")
            c.set("from-child", "c")
            other = make_cache(service, "fork2")
            other.set("x", 1)
            if other.get("x") != 1:
                failed.append("new cache")
            # The child's clock moves: an L1 entry expires after its TTL.
            mem = service.create_cache(l2_key_prefix="m", l2_ttl=60, l2_enabled=False, l1_enabled=True, l1_ttl=1)
            mem.set("short", 1)
            first = mem.get("short")
            time.sleep(1.3)
            if first != 1 or mem.get("short") is not None:
                failed.append("L1 TTL")
            os.write(write, ",".join(failed).encode() or b"ok")
            code = 0 if not failed else 1
        finally:
            os._exit(code)
    os.close(write)
    status = wait_for_child(pid, "the forked child hung")
    report = os.read(read, 16)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    # The parent goes on with its own runtime and sees the child's write.
    assert c.get("from-child") == "c"
    c.set("after-fork", 2)
    assert redis.get_raw("fork:after-fork") == b"2"
    assert c.get_stats()["backplane"]["instance_id"] == parent_id


def test_threads_of_a_forked_child_first_use_the_cache_together(redis):
    # gunicorn's threaded workers after --preload: the first requests of a
    # child arrive together, each the first use of the parent's cache there.
    service = CacheService(redis.config())
    c = make_cache(service, "fork-threads")
    c.set("k", "v")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            results = []
            start = threading.Barrier(8)

            def first_use(n):
                start.wait()
                c.set(f"t{n}", n)
                results.append(c.get("k") == "v" and c.get(f"t{n}") == n)

            threads = [threading.Thread(target=first_use, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            code = 0 if results == [True] * 8 else 1
        finally:
            os._exit(code)
    status = wait_for_child(pid, "the forked child's threads hung on their first use of the cache")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert [c.get(f"t{n}") for n in range(8)] == list(range(8))
