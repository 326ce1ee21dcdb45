"""resilient_cache: a two-level cache (L1 in process, L2 Redis/Valkey) with a
circuit breaker, the original package's API over a Rust engine.

    from resilient_cache import CacheService, CacheFactoryConfig

    service = CacheService(CacheFactoryConfig(l2_host="localhost"))
    users = service.create_cache(l2_key_prefix="users", l2_ttl=3600, l2_enabled=True,
                                 l1_enabled=True, l1_maxsize=1000, l1_ttl=60)
    users.set("42", {"name": "Ada"})
    users.get("42")
"""

import os as _os

from . import _native
from .app_cache import AppCache
from .cache_factory import CacheFactory, ResilientTwoLevelCache
from .cache_service import CacheService
from .config import CacheFactoryConfig
from .exceptions import (
    CacheConfigurationError,
    CacheConnectionError,
    CacheError,
    CacheInputError,
    CacheSerializationError,
    CircuitBreakerOpenError,
)
from .serializers import (
    CacheSerializer,
    JsonSerializer,
    PickleSerializer,
    get_serializer,
    list_serializers,
    register_serializer,
)

__version__ = "0.1.0"

AppCache.register(ResilientTwoLevelCache)

# A child made by fork rebuilds its services and caches on first use
# (the parent's runtime threads and connections are not in it).
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_native.after_fork_in_child)

__all__ = [
    "CacheService",
    "AppCache",
    "ResilientTwoLevelCache",
    "CacheFactory",
    "CacheFactoryConfig",
    "CacheError",
    "CacheConnectionError",
    "CacheSerializationError",
    "CacheConfigurationError",
    "CacheInputError",
    "CircuitBreakerOpenError",
    "CacheSerializer",
    "JsonSerializer",
    "PickleSerializer",
    "get_serializer",
    "list_serializers",
    "register_serializer",
]

try:
    from .flask_integration import FlaskCacheService, get_cache_service  # noqa: F401

    __all__ += ["FlaskCacheService", "get_cache_service"]
except ImportError:  # Flask is optional.
    pass
