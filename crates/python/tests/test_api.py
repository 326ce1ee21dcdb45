"""The original package's public API, its defaults and its errors, over real Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest

import resilient_cache
from resilient_cache import (
    AppCache,
    CacheConfigurationError,
    CacheConnectionError,
    CacheError,
    CacheFactory,
    CacheFactoryConfig,
    CacheInputError,
    CacheSerializationError,
    CacheSerializer,
    CacheService,
    CircuitBreakerOpenError,
    JsonSerializer,
    PickleSerializer,
    ResilientTwoLevelCache,
    get_serializer,
    list_serializers,
    register_serializer,
)

from conftest import eventually, make_cache


def test_public_names_are_exported():
    for name in [
        "CacheService", "AppCache", "ResilientTwoLevelCache", "CacheFactory", "CacheFactoryConfig",
        "CacheError", "CacheConnectionError", "CacheSerializationError", "CacheConfigurationError",
        "CacheSerializer", "JsonSerializer", "PickleSerializer", "get_serializer", "list_serializers",
        "register_serializer", "FlaskCacheService", "get_cache_service",
    ]:
        assert name in resilient_cache.__all__, name
        assert hasattr(resilient_cache, name), name


def test_config_defaults_are_the_originals_but_json():
    c = CacheFactoryConfig()
    assert (c.l2_backend, c.l2_host, c.l2_port, c.l2_db, c.l2_password) == ("redis", "localhost", 6379, 0, None)
    assert (c.l2_connect_timeout, c.l2_socket_timeout, c.l1_backend) == (5, 5, "ttl")
    assert (c.circuit_breaker_enabled, c.circuit_breaker_threshold, c.circuit_breaker_timeout) == (True, 5, 60)
    # pickle runs code when it reads: it is never the default.
    assert c.serializer == "json"


@pytest.mark.parametrize(
    "field, value",
    [
        ("l2_port", 0), ("l2_port", 70000), ("l2_port", "abc"), ("l2_db", -1), ("l2_backend", "memcached"),
        ("l1_backend", "fifo"), ("l2_host", ""), ("l2_socket_timeout", 0), ("serializer", "yaml"),
        ("serializer", 3), ("circuit_breaker_threshold", 0), ("circuit_breaker_timeout", 0),
        ("circuit_breaker_enabled", "maybe"),
    ],
)
def test_invalid_config_names_the_key_the_value_and_what_is_allowed(field, value):
    with pytest.raises(CacheConfigurationError) as e:
        CacheFactoryConfig(**{field: value})
    assert isinstance(e.value, ValueError)
    assert e.value.config_key == field
    assert field in str(e.value) and repr(value) in str(e.value) and "allowed" in str(e.value)


def test_backend_names_are_normalized():
    c = CacheFactoryConfig(l2_backend="Valkey", l1_backend="LRU")
    assert (c.l2_backend, c.l1_backend) == ("valkey", "lru")


def test_from_flask_config_reads_cache_keys():
    c = CacheFactoryConfig.from_flask_config(
        {
            "CACHE_REDIS_HOST": "redis.internal",
            "CACHE_REDIS_PORT": 6380,
            "CACHE_REDIS_DB": 2,
            "CACHE_REDIS_PASSWORD": "s3cret",
            "CACHE_SERIALIZER": "pickle",
            "CACHE_CIRCUIT_BREAKER_THRESHOLD": 3,
            "CACHE_BACKPLANE_ENABLED": "false",
            "SECRET_KEY": "not ours",
        }
    )
    assert (c.l2_host, c.l2_port, c.l2_db, c.l2_password) == ("redis.internal", 6380, 2, "s3cret")
    assert (c.serializer, c.circuit_breaker_threshold) == ("pickle", 3)
    assert c.options == {"CACHE_BACKPLANE_ENABLED": "false"}
    settings = c.engine_settings()
    assert settings["CACHE_REDIS_HOST"] == "redis.internal" and settings["CACHE_BACKPLANE_ENABLED"] == "false"
    assert CacheFactoryConfig.from_flask_config({}).serializer == "json"


def test_engine_refuses_a_bad_extra_setting_by_name(redis):
    with pytest.raises(CacheConfigurationError) as e:
        CacheService(redis.config(options={"CACHE_MAX_VALUE_BYTES": "lots"}))
    assert "CACHE_MAX_VALUE_BYTES" in str(e.value) and "lots" in str(e.value)


def test_service_without_config_must_be_initialized(redis):
    s = CacheService()
    assert repr(s) == "<CacheService initialized=False>"
    with pytest.raises(RuntimeError):
        s.create_cache(l2_key_prefix="x", l2_ttl=10, l2_enabled=True)
    s.init_config(redis.config())
    assert repr(s) == "<CacheService initialized=True>"
    assert isinstance(s.factory, CacheFactory)
    stats = s.get_stats()
    assert stats["defaults"]["l2_port"] == redis.port and stats["defaults"]["serializer"] == "json"


def test_create_cache_defaults_l1_to_1000_entries_and_60_seconds(service):
    c = service.create_cache(l2_key_prefix="d", l2_ttl=30, l2_enabled=True, l1_enabled=True)
    l1 = c.get_stats()["l1"]
    assert (l1["maxsize"], l1["ttl"], l1["enabled"]) == (1000, 60, True)
    off = service.create_cache(l2_key_prefix="d2", l2_ttl=30, l2_enabled=True)
    assert off.get_stats()["l1"] == {"enabled": False}


def test_create_cache_refuses_bad_arguments(service):
    with pytest.raises(CacheConfigurationError):
        make_cache(service, l1_maxsize=-1)
    with pytest.raises(CacheConfigurationError):
        make_cache(service, serializer="yaml")
    with pytest.raises(TypeError):
        make_cache(service, serializer=42)
    # The namespace rule: no glob characters, no empty prefix, not "rc"
    # (the namespace of the cache's own keys).
    for bad in ["", "a*b", "x?", "[y]", "rc"]:
        with pytest.raises(CacheConfigurationError):
            make_cache(service, prefix=bad)


def test_round_trip_of_every_operation(redis, service):
    c = make_cache(service, "users", l2_ttl=3600)
    assert isinstance(c, AppCache) and isinstance(c, ResilientTwoLevelCache)
    assert c.get("42") is None
    assert c.set("42", {"name": "Ada", "tags": ["x"], "n": 1.5}) is None
    assert c.get("42") == {"name": "Ada", "tags": ["x"], "n": 1.5}
    # L2 holds plain JSON under "{prefix}:{key}", as the original's json serializer writes it.
    assert json.loads(redis.get_raw("users:42")) == {"name": "Ada", "tags": ["x"], "n": 1.5}
    assert c.is_on_cache("42") and not c.is_on_cache("nope")
    assert 3590 <= c.get_ttl("42") <= 3600
    assert c.get_ttl("nope") is None
    assert c.set_if_not_exist("42", "other") is False
    assert c.get("42")["name"] == "Ada"
    assert c.set_if_not_exist("43", "new") is True
    assert redis.get_raw("users:43") == b'"new"'
    assert c.list_keys() == ["42", "43"]
    assert c.list_keys(prefix="43") == ["43"]
    c.set("short", 1, ttl=5)
    assert c.get_ttl("short") <= 5
    assert c.delete("43") is True
    assert c.get("43") is None and redis.get_raw("users:43") is None
    report = c.clear()
    assert report["l1_items_removed"] == 2 and report["l2_items_removed"] == 2 and report["l2_cleared"]
    assert isinstance(report["timestamp"], float)
    assert c.list_keys() == [] and redis.get_raw("users:42") is None


def test_stats_have_the_originals_shape_and_no_password(redis):
    service = CacheService(redis.config(l2_password=None))
    c = make_cache(service, "s")
    c.set("a", 1)
    c.get("a")
    c.get("b")
    stats = c.get_stats()
    assert stats["enabled"] is True
    for key in ["backend", "size", "maxsize", "ttl", "hits", "misses", "hit_rate", "usage_percent"]:
        assert key in stats["l1"], key
    assert stats["l1"]["hits"] == 1 and stats["l1"]["size"] == 1
    for key in ["backend", "endpoint", "db", "key_prefix", "ttl", "serializer"]:
        assert key in stats["l2"], key
    assert stats["l2"]["serializer"] == "json" and stats["l2"]["key_prefix"] == "s"
    cb = stats["circuit_breaker"]
    assert (cb["enabled"], cb["state"], cb["failure_count"], cb["threshold"]) == (True, "closed", 0, 5)
    assert "last_failure_time" in cb and "last_success_time" in cb


def test_password_never_shows_in_stats(redis):
    redis.command("CONFIG", "SET", "requirepass", "hunter2")
    c = make_cache(CacheService(redis.config(l2_password="hunter2")), "p")
    c.set("a", 1)
    assert redis.command("AUTH", "hunter2") == b"+OK\r\n"
    assert "hunter2" not in json.dumps(c.get_stats())


def test_an_l1_hit_returns_the_stored_object_itself(service):
    c = make_cache(service)
    value = {"big": list(range(1000))}
    c.set("k", value)
    assert c.get("k") is value
    assert c.get("k") is c.get("k")


def test_a_value_read_from_l2_is_decoded_once_then_shared(redis, service):
    writer = make_cache(service, "sh", backplane=False)
    reader = make_cache(CacheService(redis.config()), "sh", backplane=False)
    # The reader's tracking hears of the writer's write; that notice must land
    # before the reads, or it evicts what the first one put in L1.
    eventually(lambda: reader.get_stats()["tracking"]["connected"], what="the reader's tracking")
    writer.set("k", [1, 2, 3])
    eventually(lambda: reader.get_stats()["tracking"]["notifications"] >= 1, what="the write's notice")
    first = reader.get("k")
    assert first == [1, 2, 3]
    assert reader.get("k") is first


def test_bytes_that_do_not_decode_are_a_counted_miss_and_removed(redis, service):
    c = make_cache(service, "bad", l1_enabled=False)
    redis.set_raw("bad:k", b"\xff not json")
    assert c.get("k") is None
    assert c.get_stats()["errors"]["decode"] == 1
    assert redis.get_raw("bad:k") is None
    # A corrupt key never counts against the breaker.
    assert c.breaker_state() == "closed"


def test_a_value_the_serializer_refuses_raises_and_stores_nothing(redis, service):
    c = make_cache(service, "enc")
    c.set("k", "old")
    with pytest.raises(CacheSerializationError) as e:
        c.set("k", {1, 2})  # a set is not JSON
    assert e.value.key == "k" and e.value.serializer == "json"
    assert c.get("k") is None and redis.get_raw("enc:k") is None
    assert c.get_stats()["errors"]["encode"] == 1


def test_set_if_not_exist_of_a_refused_value_raises_and_keeps_the_current_one(redis, service):
    c = make_cache(service, "enc2")
    c.set("k", "old")
    with pytest.raises(CacheSerializationError) as e:
        c.set_if_not_exist("k", {1, 2})
    assert e.value.key == "k"
    assert c.get("k") == "old" and redis.get_raw("enc2:k") == b'"old"'
    with pytest.raises(CacheSerializationError):
        c.set_if_not_exist("new", {3})
    assert c.get("new") is None and redis.get_raw("enc2:new") is None


def test_set_many_skips_a_refused_value_and_stores_the_others(redis, service):
    c = make_cache(service, "enc3")
    c.set_many({"a": 1, "b": {2}, "c": 3})
    assert c.get_many(["a", "b", "c"]) == [1, None, 3]
    assert c.get_stats()["errors"]["encode"] == 1


def test_an_l1_only_cache_keeps_any_object(service):
    c = service.create_cache(l2_key_prefix="mem", l2_ttl=60, l2_enabled=False, l1_enabled=True)
    obj = object()
    c.set("o", obj)
    assert c.get("o") is obj
    assert c.get_stats()["l2"] == {"enabled": False}


def test_an_over_long_key_is_refused_with_a_clear_error(service):
    c = make_cache(service)
    with pytest.raises(CacheInputError) as e:
        c.set("k" * 5000, 1)
    assert "key" in str(e.value)
    assert c.get("k" * 5000) is None


def test_serializer_registry():
    assert list_serializers() == ["json", "pickle"]
    assert isinstance(get_serializer("json"), JsonSerializer)
    assert isinstance(get_serializer("pickle"), PickleSerializer)
    with pytest.raises(ValueError) as e:
        get_serializer("yaml")
    assert "json, pickle" in str(e.value)
    with pytest.raises(TypeError):
        register_serializer("bad", dict)
    assert repr(JsonSerializer()) == "JsonSerializer()" and repr(PickleSerializer()) == "PickleSerializer()"
    with pytest.raises(ValueError):
        JsonSerializer().serialize({1})
    with pytest.raises(ValueError):
        JsonSerializer().deserialize(b"\xff")


class Rot13Json(CacheSerializer):
    """A serializer written in Python: JSON, bytes reversed."""

    def serialize(self, value):
        return json.dumps(value).encode()[::-1]

    def deserialize(self, data):
        return json.loads(bytes(data)[::-1])


def test_a_python_serializer_by_name_and_by_instance(redis, service):
    register_serializer("reversed-json", Rot13Json)
    try:
        assert "reversed-json" in list_serializers()
        by_name = make_cache(service, "py1", serializer="reversed-json")
        by_name.set("k", {"a": 1})
        assert redis.get_raw("py1:k") == b'{"a": 1}'[::-1]
        assert by_name.get_stats()["l2"]["serializer"] == "reversed-json"
        by_instance = make_cache(service, "py2", serializer=Rot13Json())
        by_instance.set("k", [1])
        fresh = make_cache(CacheService(redis.config()), "py2", serializer=Rot13Json(), l1_enabled=False)
        assert fresh.get("k") == [1]
    finally:
        from resilient_cache import serializers

        serializers._REGISTRY.pop("reversed-json", None)


def test_pickle_when_named(redis, service):
    c = make_cache(service, "pk", serializer="pickle")
    c.set("t", (1, b"x", {2}))
    fresh = make_cache(CacheService(redis.config(serializer="pickle")), "pk", l1_enabled=False)
    assert fresh.get("t") == (1, b"x", {2})
    assert redis.get_raw("pk:t")[:1] == b"\x80"


def test_exceptions_keep_the_originals_details():
    assert issubclass(CacheConnectionError, CacheError)
    assert issubclass(CircuitBreakerOpenError, CacheError)
    e = CacheConnectionError(backend="redis", original_error=OSError("down"))
    assert e.details == {"backend": "redis", "original_error": "down", "error_type": "OSError"}
    assert str(e).startswith("Failed to connect to cache backend - Details:")
    assert str(CacheError("plain")) == "plain"
    s = CacheSerializationError(key="k", serializer="json")
    assert (s.key, s.serializer, s.details) == ("k", "json", {"key": "k", "serializer": "json"})
    c = CacheConfigurationError(config_key="l2_port", config_value=0)
    assert c.details == {"config_key": "l2_port", "config_value": "0"}
    assert CircuitBreakerOpenError(failure_count=0).details == {"failure_count": 0}


def test_get_or_load_single_flight(service):
    c = make_cache(service, "load")
    calls = []
    gate = threading.Event()

    def loader():
        calls.append(1)
        gate.wait(5)
        return {"loaded": len(calls)}

    results = []
    threads = [threading.Thread(target=lambda: results.append(c.get_or_load("k", loader))) for _ in range(8)]
    for t in threads:
        t.start()
    eventually(lambda: calls, what="the loader to start")
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert results == [{"loaded": 1}] * 8
    assert c.get("k") == {"loaded": 1}
    assert c.get_or_load("k", lambda: 1 / 0) == {"loaded": 1}


def test_get_or_load_raises_the_loaders_exception_and_caches_nothing(service):
    c = make_cache(service, "lerr")

    class Boom(Exception):
        pass

    def loader():
        raise Boom("db down")

    with pytest.raises(Boom, match="db down"):
        c.get_or_load("k", loader)
    assert c.get("k") is None
    assert c.get_or_load("k", lambda: 7, ttl=30) == 7


def test_get_or_load_fail_safe_serves_the_last_value(service):
    c = make_cache(service, "fs", fail_safe_max_duration=60)
    assert c.get_or_load("k", lambda: "v1") == "v1"
    assert c.expire("k")
    assert c.get_or_load("k", lambda: 1 / 0) == "v1"
    assert c.get_or_load("slow", lambda: "s1") == "s1"
    c.expire("slow")
    assert c.get_or_load("slow", lambda: time.sleep(2) or "s2", hard_timeout=0.2) == "s1"


def test_tags_batches_and_expire(redis, service):
    c = make_cache(service, "tg")
    c.set_with_tags("u1", {"id": 1}, ["team:a"])
    c.set_with_tags("u2", {"id": 2}, ["team:a"])
    c.set("u3", {"id": 3})
    assert c.remove_by_tag("team:a")["l1_entries"] == 2
    assert c.get_many(["u1", "u2", "u3"]) == [None, None, {"id": 3}]
    c.set_many({"m1": 1, "m2": [2]})
    c.set_many([("m3", "x")])
    assert c.get_many(["m1", "m2", "m3", "nope"]) == [1, [2], "x", None]
    assert redis.get_raw("tg:m2") == b"[2]"
    assert c.delete_many(["m1", "m2", "nope"]) == 2
    with pytest.raises(CacheInputError):
        c.set_with_tags("u4", 1, ["bad\ntag"])


def test_keys_that_are_not_str_are_used_as_str_as_the_original_did(redis, service):
    c = make_cache(service, "ik")
    c.set(42, "answer")
    assert c.get("42") == "answer" and c.get(42) == "answer"
    assert redis.get_raw("ik:42") == b'"answer"'
    assert c.is_on_cache(42) and c.get_ttl(42) is not None
    assert c.delete(42) and c.get("42") is None


def test_service_create_cache_has_the_factorys_signature():
    import inspect

    params = list(inspect.signature(CacheService.create_cache).parameters)
    assert params[:11] == [
        "self", "l2_key_prefix", "l2_ttl", "l2_enabled", "l1_enabled", "l1_maxsize", "l1_ttl",
        "serializer", "circuit_breaker_enabled", "circuit_breaker_threshold", "circuit_breaker_timeout",
    ]


def test_set_takes_tags_too(service):
    c = make_cache(service, "st")
    c.set("a", 1, tags=["g"])
    c.set("b", 2)
    c.remove_by_tag("g")
    assert (c.get("a"), c.get("b")) == (None, 2)


def test_invalidation_reports_reach_every_instance(redis, service):
    a = make_cache(service, "inv", fail_safe_max_duration=60)
    b = make_cache(CacheService(redis.config()), "inv", fail_safe_max_duration=60)
    a.set("t1", "v1", tags=["blue"])
    assert b.get("t1") == "v1"  # now in b's L1
    done = a.expire_by_tag("blue")
    assert (done["scope"], done["tag"], done["kind"]) == ("tag", "blue", "expire")
    # Stale in both instances: a loader is asked, and its failure is answered with the old value.
    assert eventually(lambda: b.get("t1") is None, what="b to see the tag expired")
    assert b.get_or_load("t1", lambda: 1 / 0) == "v1"
    a.set("n1", 1)
    a.set("n2", 2)
    assert b.get("n1") == 1
    done = a.invalidate_all()
    assert (done["scope"], done["kind"]) == ("namespace", "remove")
    assert eventually(lambda: b.get("n1") is None and b.get("n2") is None, what="b to drop the namespace")
    a.set("n3", 3)
    assert a.expire_all()["kind"] == "expire"
    assert a.get("n3") is None and a.get_or_load("n3", lambda: 1 / 0) == 3


def test_the_type_stub_lists_every_method_of_the_cache():
    import ast
    from pathlib import Path

    stub = ast.parse((Path(resilient_cache.__file__).parent / "_native.pyi").read_text())
    cls = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "ResilientTwoLevelCache")
    typed = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    public = {n for n in dir(ResilientTwoLevelCache) if not n.startswith("_")}
    assert public <= typed, public - typed


def test_bad_durations_name_themselves(service):
    c = make_cache(service, "dur")
    with pytest.raises(CacheInputError, match="ttl = -1"):
        c.set("k", 1, ttl=-1)
    with pytest.raises(CacheInputError, match="hard_timeout"):
        c.get_or_load("k", lambda: 1, hard_timeout=float("nan"))
    with pytest.raises(CacheConfigurationError, match="circuit_breaker_timeout"):
        make_cache(service, "dur2", circuit_breaker_timeout=-5)
    with pytest.raises(CacheConfigurationError, match="circuit_breaker_threshold = -1"):
        make_cache(service, "dur4", circuit_breaker_threshold=-1)
    with pytest.raises(CacheConfigurationError, match="fail_safe_max_duration"):
        make_cache(service, "dur3", fail_safe_max_duration=-1)
    assert c.get("k") is None


def test_cache_factory_used_directly_as_the_original_shows(redis):
    factory = CacheFactory(CacheFactoryConfig(l2_host="127.0.0.1", l2_port=redis.port))
    cache = factory.create_cache(
        l2_key_prefix="users", l2_ttl=3600, l2_enabled=True, l1_enabled=True, l1_maxsize=1000, l1_ttl=60
    )
    cache.set("1", "x")
    assert cache.get("1") == "x" and redis.get_raw("users:1") == b'"x"'
    assert factory.ping() is not None and factory.is_healthy()
    assert factory.get_stats()["dependencies"] == {"l1": True, "l2": True, "flask": True}
    with pytest.raises(TypeError):
        CacheFactory({"l2_host": "x"})
