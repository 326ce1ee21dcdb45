"""``CacheFactory``: makes caches that share one engine service."""

from __future__ import annotations

import logging
from typing import Optional, Union

from . import _native
from .config import CacheFactoryConfig, _int, _seconds
from .exceptions import CacheConfigurationError
from .serializers import CacheSerializer, get_serializer, serializer_name

ResilientTwoLevelCache = _native.ResilientTwoLevelCache


def _flask_available() -> bool:
    try:
        import flask  # noqa: F401
    except ImportError:
        return False
    return True


class CacheFactory:
    """Builds caches over one service: one runtime, one set of L2 connections."""

    def __init__(self, config: CacheFactoryConfig, logger: Optional[logging.Logger] = None) -> None:
        if not isinstance(config, CacheFactoryConfig):
            raise TypeError(f"config must be a CacheFactoryConfig, got {type(config).__name__}")
        self.config = config
        self.logger = logger or config.logger or logging.getLogger("resilient_cache")
        self._service = _native.Service(config.engine_settings())
        self.logger.info("CacheFactory initialized")

    def create_cache(
        self,
        l2_key_prefix: str,
        l2_ttl: int,
        l2_enabled: bool,
        l1_enabled: bool = False,
        l1_maxsize: int = 0,
        l1_ttl: int = 0,
        serializer: Optional[Union[str, CacheSerializer]] = None,
        circuit_breaker_enabled: Optional[bool] = None,
        circuit_breaker_threshold: Optional[int] = None,
        circuit_breaker_timeout: Optional[int] = None,
        *,
        backplane: Optional[bool] = None,
        fail_safe_max_duration: Optional[float] = None,
    ) -> ResilientTwoLevelCache:
        """A cache whose L2 keys are ``"{l2_key_prefix}:{key}"``.

        ``l1_maxsize`` and ``l1_ttl`` of 0 mean 1000 entries and 60 seconds.
        ``serializer`` is a registered name or an instance; ``None`` takes the
        service's (``json`` unless configured). Keyword-only extras:
        ``backplane`` (evict other instances' L1 on writes; on by default)
        and ``fail_safe_max_duration`` (seconds a stale value may stand in for
        a failing ``get_or_load`` loader).
        """
        chosen = serializer if serializer is not None else self.config.serializer
        if isinstance(chosen, str):
            try:
                instance = get_serializer(chosen)
            except ValueError as e:
                raise CacheConfigurationError(str(e), config_key="serializer", config_value=chosen) from None
            name = chosen
        elif isinstance(chosen, CacheSerializer):
            instance, name = chosen, serializer_name(chosen)
        else:
            raise TypeError(f"serializer must be str or CacheSerializer, got {type(chosen).__name__}")
        l1_maxsize = _int("l1_maxsize", l1_maxsize, 0)
        l1_ttl = _seconds("l1_ttl", l1_ttl, 0)
        l2_ttl = _seconds("l2_ttl", l2_ttl, 0)
        if circuit_breaker_threshold is not None:
            circuit_breaker_threshold = _int("circuit_breaker_threshold", circuit_breaker_threshold, 1)
        cache = ResilientTwoLevelCache(
            self._service,
            l2_key_prefix,
            l2_ttl,
            bool(l2_enabled),
            bool(l1_enabled),
            l1_maxsize or 1000,
            l1_ttl or 60.0,
            instance,
            name,
            circuit_breaker_enabled,
            circuit_breaker_threshold,
            circuit_breaker_timeout,
            backplane,
            fail_safe_max_duration,
        )
        self.logger.info(
            "Cache created: prefix=%s, L1=%s, L2=%s",
            l2_key_prefix,
            "enabled" if l1_enabled else "disabled",
            "enabled" if l2_enabled else "disabled",
        )
        return cache

    def ping(self) -> Optional[float]:
        """Round trip to L2 in seconds, or ``None`` when it does not answer."""
        return self._service.ping()

    def is_healthy(self) -> bool:
        """Whether L2 answers and no breaker is open."""
        return self._service.is_healthy()

    def get_stats(self) -> dict:
        """What is available, and the service's defaults."""
        c = self.config
        return {
            "dependencies": {"l1": True, "l2": True, "flask": _flask_available()},
            "defaults": {
                "l1_backend": c.l1_backend,
                "l2_backend": c.l2_backend,
                "l2_host": c.l2_host,
                "l2_port": c.l2_port,
                "serializer": c.serializer if isinstance(c.serializer, str) else serializer_name(c.serializer),
                "circuit_breaker_enabled": c.circuit_breaker_enabled,
                "circuit_breaker_threshold": c.circuit_breaker_threshold,
                "circuit_breaker_timeout": c.circuit_breaker_timeout,
            },
        }

    def __repr__(self) -> str:
        return f"<CacheFactory l2={self.config.l2_host}:{self.config.l2_port}>"
