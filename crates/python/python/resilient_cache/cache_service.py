"""``CacheService``: the framework-free entry point."""

from __future__ import annotations

import functools
import logging
from typing import Optional

from .cache_factory import CacheFactory, ResilientTwoLevelCache
from .config import CacheFactoryConfig


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

    @functools.wraps(CacheFactory.create_cache)
    def create_cache(self, *args, **kwargs) -> ResilientTwoLevelCache:
        return self.factory.create_cache(*args, **kwargs)

    def get_stats(self) -> dict:
        """The factory's stats."""
        return self.factory.get_stats()

    def __repr__(self) -> str:
        return f"<CacheService initialized={self._factory is not None}>"
