"""``CacheService``: the framework-free entry point."""

from __future__ import annotations

import logging
from typing import Optional, Union

from .cache_factory import CacheFactory, ResilientTwoLevelCache
from .config import CacheFactoryConfig
from .serializers import CacheSerializer


class CacheService:
    """Holds a ``CacheFactory``; ``create_cache`` makes the caches.

    Made without a config, it must be given one with ``init_config`` first.
    """

    def __init__(self, config: Optional[CacheFactoryConfig] = None, logger: Optional[logging.Logger] = None) -> None:
        self._factory: Optional[CacheFactory] = None
        self._logger = logger
        if config is not None:
            self.init_config(config, logger=logger)

    def init_config(self, config: CacheFactoryConfig, logger: Optional[logging.Logger] = None) -> None:
        """Starts the service with ``config`` (fails only on invalid settings, never because Redis is down)."""
        self._logger = logger or self._logger or config.logger or logging.getLogger("resilient_cache")
        config.logger = self._logger
        self._factory = CacheFactory(config, self._logger)
        self._logger.info("CacheService initialized")

    @property
    def factory(self) -> CacheFactory:
        """The factory; ``RuntimeError`` before ``init_config``."""
        if self._factory is None:
            raise RuntimeError("CacheService not initialized. Call init_config(config) first.")
        return self._factory

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
        **extras,
    ) -> ResilientTwoLevelCache:
        """See ``CacheFactory.create_cache``."""
        return self.factory.create_cache(
            l2_key_prefix=l2_key_prefix,
            l2_ttl=l2_ttl,
            l2_enabled=l2_enabled,
            l1_enabled=l1_enabled,
            l1_maxsize=l1_maxsize,
            l1_ttl=l1_ttl,
            serializer=serializer,
            circuit_breaker_enabled=circuit_breaker_enabled,
            circuit_breaker_threshold=circuit_breaker_threshold,
            circuit_breaker_timeout=circuit_breaker_timeout,
            **extras,
        )

    def get_stats(self) -> dict:
        """The factory's stats."""
        return self.factory.get_stats()

    def __repr__(self) -> str:
        return f"<CacheService initialized={self._factory is not None}>"
