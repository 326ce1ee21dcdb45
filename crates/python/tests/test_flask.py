"""Flask: the app factory pattern with init_app, and get_cache_service."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify

from resilient_cache import FlaskCacheService, get_cache_service

cache_service = FlaskCacheService()  # module level, as in an app factory


def create_app(redis) -> Flask:
    app = Flask(__name__)
    app.config.update(
        CACHE_REDIS_HOST="127.0.0.1",
        CACHE_REDIS_PORT=redis.port,
        CACHE_REDIS_SOCKET_TIMEOUT=1,
        CACHE_CIRCUIT_BREAKER_THRESHOLD=2,
    )
    cache_service.init_app(app)
    users = cache_service.create_cache(
        l2_key_prefix="users", l2_ttl=60, l2_enabled=True, l1_enabled=True, l1_maxsize=100, l1_ttl=30
    )
    loads = []

    @app.get("/users/<uid>")
    def user(uid):
        value = users.get_or_load(uid, lambda: loads.append(uid) or {"id": uid})
        return jsonify(value=value, loads=len(loads))

    @app.get("/stats")
    def stats():
        return jsonify(get_cache_service().get_stats())

    return app


def test_app_factory_with_init_app(redis):
    app = create_app(redis)
    assert app.extensions["cache_service"] is cache_service
    client = app.test_client()
    assert client.get("/users/7").get_json() == {"value": {"id": "7"}, "loads": 1}
    assert client.get("/users/7").get_json() == {"value": {"id": "7"}, "loads": 1}
    assert redis.get_raw("users:7") == b'{"id": "7"}'
    stats = client.get("/stats").get_json()
    assert stats["defaults"]["l2_port"] == redis.port and stats["defaults"]["circuit_breaker_threshold"] == 2
    with app.app_context():
        assert get_cache_service() is cache_service
    assert get_cache_service(app) is cache_service


def test_app_keeps_serving_when_redis_dies(redis):
    app = create_app(redis)
    client = app.test_client()
    redis.kill()
    for _ in range(3):
        assert client.get("/users/9").get_json()["value"] == {"id": "9"}


def test_get_cache_service_before_init_app():
    app = Flask("bare")
    with pytest.raises(RuntimeError, match="init_app"):
        get_cache_service(app)


def test_flask_cache_service_given_the_app(redis):
    app = Flask("direct")
    app.config["CACHE_REDIS_HOST"] = "127.0.0.1"
    app.config["CACHE_REDIS_PORT"] = str(redis.port)  # as read from the environment
    service = FlaskCacheService(app)
    assert get_cache_service(app) is service
    c = service.create_cache(l2_key_prefix="direct", l2_ttl=60, l2_enabled=True)
    c.set("k", [1])
    assert redis.get_raw("direct:k") == b"[1]"
