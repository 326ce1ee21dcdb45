"""Service-wide settings: ``CacheFactoryConfig``, the original's fields and defaults.

One difference, on purpose: ``serializer`` defaults to ``"json"`` (the
original defaulted to ``"pickle"``, and unpickling bytes read from Redis runs
code). Name ``"pickle"`` to keep reading a namespace written with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .exceptions import CacheConfigurationError
from .serializers import CacheSerializer, list_serializers

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# What each field becomes in the engine's configuration.
_ENGINE_KEYS = {
    "l2_backend": "CACHE_L2_BACKEND",
    "l2_host": "CACHE_REDIS_HOST",
    "l2_port": "CACHE_REDIS_PORT",
    "l2_db": "CACHE_REDIS_DB",
    "l2_password": "CACHE_REDIS_PASSWORD",
    "l2_connect_timeout": "CACHE_REDIS_CONNECT_TIMEOUT",
    "l2_socket_timeout": "CACHE_REDIS_SOCKET_TIMEOUT",
    "l1_backend": "CACHE_L1_BACKEND",
    "circuit_breaker_enabled": "CACHE_CIRCUIT_BREAKER_ENABLED",
    "circuit_breaker_threshold": "CACHE_CIRCUIT_BREAKER_THRESHOLD",
    "circuit_breaker_timeout": "CACHE_CIRCUIT_BREAKER_TIMEOUT",
}
_FLASK_KEYS = dict(_ENGINE_KEYS, serializer="CACHE_SERIALIZER")


def _refuse(key: str, value: Any, allowed: str) -> CacheConfigurationError:
    return CacheConfigurationError(
        f"{key} = {value!r} is not allowed: {allowed}", config_key=key, config_value=value
    )


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _refuse(key, value, "true or false")


def _int(key: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool):
        raise _refuse(key, value, f"an integer >= {low}")
    try:
        n = int(value)
        if isinstance(value, float) and n != value:
            raise ValueError
    except (TypeError, ValueError):
        raise _refuse(key, value, "an integer") from None
    if n < low or (high is not None and n > high):
        raise _refuse(key, value, f"an integer from {low} to {high}" if high else f"an integer >= {low}")
    return n


def _seconds(key: str, value: Any, low: float) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise _refuse(key, value, f"a number of seconds >= {low}") from None
    if isinstance(value, bool) or not s >= low or s == float("inf"):
        raise _refuse(key, value, f"a number of seconds >= {low}")
    return s


def _choice(key: str, value: Any, choices: tuple) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise _refuse(key, value, "one of " + ", ".join(choices))
    return value.strip().lower()


@dataclass
class CacheFactoryConfig:
    """Defaults for every cache of a service; validated when made."""

    l2_backend: str = "redis"
    l2_host: str = "localhost"
    l2_port: int = 6379
    l2_db: int = 0
    l2_password: Optional[str] = None
    #: Seconds to connect to L2.
    l2_connect_timeout: float = 5
    #: Seconds one L2 operation may take: no cache call waits longer on a sick Redis.
    l2_socket_timeout: float = 5
    l1_backend: str = "ttl"
    serializer: Union[str, CacheSerializer] = "json"
    circuit_breaker_enabled: bool = True
    circuit_breaker_threshold: int = 5
    circuit_breaker_timeout: int = 60
    logger: Optional[logging.Logger] = None
    #: Other engine settings by their ``CACHE_*`` name (``CACHE_REDIS_URL``,
    #: ``CACHE_BACKPLANE_ENABLED``, ``CACHE_INVALIDATION``, ``CACHE_MAX_VALUE_BYTES``...).
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.l2_backend = _choice("l2_backend", self.l2_backend, ("redis", "valkey"))
        self.l1_backend = _choice("l1_backend", self.l1_backend, ("ttl", "lru"))
        if not isinstance(self.l2_host, str) or not self.l2_host.strip() or " " in self.l2_host.strip():
            raise _refuse("l2_host", self.l2_host, "a host name or an IP address")
        self.l2_host = self.l2_host.strip()
        self.l2_port = _int("l2_port", self.l2_port, 1, 65535)
        self.l2_db = _int("l2_db", self.l2_db, 0)
        if self.l2_password is not None and not isinstance(self.l2_password, str):
            raise _refuse("l2_password", "<redacted>", "a string or None")
        self.l2_connect_timeout = _seconds("l2_connect_timeout", self.l2_connect_timeout, 0.001)
        self.l2_socket_timeout = _seconds("l2_socket_timeout", self.l2_socket_timeout, 0.001)
        if isinstance(self.serializer, str):
            if self.serializer not in list_serializers():
                raise _refuse(
                    "serializer",
                    self.serializer,
                    f"one of {list_serializers()} or a CacheSerializer instance",
                )
        elif not isinstance(self.serializer, CacheSerializer):
            raise _refuse("serializer", self.serializer, "a registered name or a CacheSerializer instance")
        self.circuit_breaker_enabled = _bool("circuit_breaker_enabled", self.circuit_breaker_enabled)
        self.circuit_breaker_threshold = _int("circuit_breaker_threshold", self.circuit_breaker_threshold, 1)
        self.circuit_breaker_timeout = _int("circuit_breaker_timeout", self.circuit_breaker_timeout, 1)
        if not isinstance(self.options, Mapping):
            raise _refuse("options", self.options, "a mapping of CACHE_* names to values")
        for k in self.options:
            if not isinstance(k, str) or not k.startswith("CACHE_"):
                raise _refuse("options", k, "CACHE_* setting names")
        if not isinstance(self.logger, logging.Logger):
            self.logger = logging.getLogger("resilient_cache")

    @classmethod
    def from_flask_config(cls, config: Mapping[str, Any]) -> "CacheFactoryConfig":
        """From a Flask ``app.config`` (or any mapping) of ``CACHE_*`` keys.

        The original's keys map to the fields; any other ``CACHE_*`` key is
        passed to the engine as it is (see ``options``).
        """
        by_key = {v: k for k, v in _FLASK_KEYS.items()}
        kwargs: dict[str, Any] = {}
        options: dict[str, str] = {}
        for key, value in config.items():
            if not isinstance(key, str) or not key.startswith("CACHE_"):
                continue
            if key in by_key:
                if value is not None:
                    kwargs[by_key[key]] = value
            elif value is not None:
                options[key] = value
        return cls(options=options, **kwargs)

    def engine_settings(self) -> dict[str, str]:
        """These settings as the engine reads them: ``CACHE_*`` names to strings."""
        out = {str(k): _text(v) for k, v in self.options.items() if v is not None}
        for name, key in _ENGINE_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = _text(value)
        return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
