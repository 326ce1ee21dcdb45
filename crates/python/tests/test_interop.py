"""A Rust service and a Python service on one namespace (json): each reads
what the other writes, and a write on either side evicts the other's L1."""

from __future__ import annotations

import json

from resilient_cache import CacheService

from conftest import eventually, make_cache


def test_values_cross_both_ways(redis, peer_factory):
    rust = peer_factory("shared")
    py = make_cache(CacheService(redis.config()), "shared")
    py.set("from-python", {"name": "Ada", "langs": ["py", "rs"], "n": 1})
    reply = rust.ask("get from-python")
    assert reply.startswith("value ")
    assert json.loads(reply[len("value "):]) == {"name": "Ada", "langs": ["py", "rs"], "n": 1}
    assert rust.ask('set from-rust {"id":42,"ok":true}') == "ok"
    assert py.get("from-rust") == {"id": 42, "ok": True}


def test_a_rust_write_evicts_the_python_l1(redis, peer_factory):
    rust = peer_factory("coh")
    py = make_cache(CacheService(redis.config()), "coh")
    # Another client's writes reach L1 once the cache's sources are set up.
    eventually(lambda: py.get_stats()["backplane"]["connected"], what="the Python cache's sources")
    py.set("k", 1)
    assert py.get("k") == 1
    assert rust.ask("set k 2") == "ok"
    eventually(lambda: py.get("k") == 2, what="the Python L1 to drop the old value")


def test_a_python_write_evicts_the_rust_l1(redis, peer_factory):
    rust = peer_factory("coh2")
    py = make_cache(CacheService(redis.config()), "coh2")
    py.set("k", "old")
    assert rust.ask("watch k") == "ready"  # "k" is now in the Rust L1
    py.set("k", "new")
    assert rust.read() == "evicted"
    assert rust.ask("get k") == 'value "new"'
