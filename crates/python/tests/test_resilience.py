"""A sick Redis never surfaces as an error or a long wait: outage, freeze, recovery."""

from __future__ import annotations

import time

from resilient_cache import CacheService

from conftest import eventually, make_cache

# A bound on any call against a sick Redis: the operation timeout (1 s in
# these tests) plus slack for a loaded CI machine. It catches a call that
# waits for TCP or retries (the original stalled 30 s); it is not a speed test.
BOUND = 1.0 + 3.0


def timed(fn, *args):
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def test_redis_down_from_the_start_serves_from_l1(redis):
    redis.kill()
    service = CacheService(redis.config())  # never fails because Redis is down
    c = make_cache(service, "down", circuit_breaker_threshold=1)
    c.set("k", {"v": 1})
    assert c.get("k") == {"v": 1}
    assert c.get("absent") is None
    assert c.breaker_state() == "open"
    assert c.get_stats()["circuit_breaker"]["state"] == "open"
    assert service.factory.ping() is None and not service.factory.is_healthy()


def test_frozen_redis_bounds_every_call_then_recovers(redis, service):
    c = make_cache(service, "frz", l1_enabled=False, circuit_breaker_threshold=2, circuit_breaker_timeout=1)
    c.set("k", "v")
    redis.freeze()
    try:
        for op, args in [(c.get, ("k",)), (c.set, ("k", "w")), (c.get, ("k",)), (c.is_on_cache, ("k",))]:
            _, took = timed(op, *args)
            assert took < BOUND, f"{op.__name__} waited {took:.2f} s on a frozen Redis"
        assert c.breaker_state() == "open"
        # While the breaker is open, L2 is not asked at all.
        _, took = timed(c.get, "k")
        assert took < BOUND
    finally:
        redis.thaw()
    # After the breaker's timeout a probe closes it; the write made during
    # the outage is replayed.
    eventually(lambda: redis.get_raw("frz:k") == b'"w"', timeout=10, what="the replayed write")
    eventually(lambda: c.get("k") == "w" and c.breaker_state() == "closed", timeout=10, what="recovery")


def test_writes_during_an_outage_are_replayed_after_restart(redis, service):
    c = make_cache(service, "rep", circuit_breaker_threshold=1, circuit_breaker_timeout=1)
    c.set("before", 1)
    redis.kill()
    c.set("during", 2)
    c.delete("before")
    assert c.get("during") == 2  # L1 keeps serving
    redis.start()  # same port, empty
    eventually(lambda: redis.get_raw("rep:during") == b"2", timeout=15, what="the replayed write")
    assert redis.get_raw("rep:before") is None
    assert c.get_stats()["recovery"]["replayed"] >= 1
