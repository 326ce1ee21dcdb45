"""``AppCache``: the interface every cache of this package implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, List, Optional


class AppCache(ABC):
    """What application code may rely on, whatever the cache behind it.

    ``ResilientTwoLevelCache`` is registered as an implementation, so
    ``isinstance(cache, AppCache)`` holds for every cache ``create_cache`` makes.
    """

    @abstractmethod
    def get(self, key: str) -> Any:
        """The value of ``key`` (L1, then L2), or ``None``."""

    @abstractmethod
    def set(self, key: str, value: Any) -> None:
        """Stores ``value`` in both levels (write-through)."""

    @abstractmethod
    def set_if_not_exist(self, key: str, value: Any) -> bool:
        """Stores ``value`` only if ``key`` is absent; whether it was stored."""

    @abstractmethod
    def delete(self, key: str) -> Any:
        """Removes ``key`` from both levels."""

    @abstractmethod
    def clear(self) -> dict:
        """Empties the namespace: ``{l1_items_removed, l2_items_removed, timestamp, ...}``."""

    @abstractmethod
    def get_stats(self) -> dict:
        """``{enabled, l1, l2, circuit_breaker, ...}``."""

    @abstractmethod
    def get_ttl(self, key: str) -> Optional[int]:
        """Seconds ``key`` has left, or ``None``."""

    @abstractmethod
    def list_keys(self, prefix: Optional[str] = None) -> List[str]:
        """Keys of the namespace, optionally those starting with ``prefix``."""

    @abstractmethod
    def is_on_cache(self, key: str) -> bool:
        """Whether ``key`` is in either level."""
