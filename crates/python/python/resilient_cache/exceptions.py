"""The exceptions of resilient_cache: one base class, one subclass per kind."""

from __future__ import annotations

from typing import Any, Optional


class CacheError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str, details: Optional[dict] = None) -> None:
        self.message = message
        self.details = details or {}
        super().__init__(message)

    def __str__(self) -> str:
        if self.details:
            return f"{self.message} - Details: {self.details}"
        return self.message


def _details(original_error: Optional[BaseException] = None, **given: Any) -> dict[str, Any]:
    """The details of an error: the given fields that are set, then the original error."""
    details = {k: v for k, v in given.items() if v is not None and v != ""}
    if original_error is not None:
        details["original_error"] = str(original_error)
        details["error_type"] = type(original_error).__name__
    return details


class CacheConnectionError(CacheError):
    """L2 could not be reached (never raised by get/set: they degrade to L1)."""

    def __init__(
        self,
        message: str = "Failed to connect to cache backend",
        backend: Optional[str] = None,
        original_error: Optional[BaseException] = None,
    ) -> None:
        super().__init__(message, _details(original_error, backend=backend))
        self.backend = backend
        self.original_error = original_error


class CacheSerializationError(CacheError):
    """A value the serializer cannot encode (raised by set)."""

    def __init__(
        self,
        message: str = "Failed to serialize/deserialize cache data",
        key: Optional[str] = None,
        serializer: Optional[str] = None,
        original_error: Optional[BaseException] = None,
    ) -> None:
        super().__init__(message, _details(original_error, key=key, serializer=serializer))
        self.key = key
        self.serializer = serializer
        self.original_error = original_error


class CacheConfigurationError(CacheError, ValueError):
    """Invalid configuration: the message names the key, the value and what is allowed.

    It is also a ``ValueError``, which the original package raised for invalid settings.
    """

    def __init__(
        self,
        message: str = "Invalid cache configuration",
        config_key: Optional[str] = None,
        config_value: Optional[Any] = None,
    ) -> None:
        shown = None if config_value is None else str(config_value)
        super().__init__(message, _details(config_key=config_key, config_value=shown))
        self.config_key = config_key
        self.config_value = config_value


class CacheInputError(CacheError, ValueError):
    """Input the cache refuses: a key longer than the maximum, a value too large, a bad tag."""


class CircuitBreakerOpenError(CacheError):
    """The circuit breaker is open (kept for the original's API; get/set never raise it)."""

    def __init__(
        self,
        message: str = "Circuit breaker is open",
        backend: Optional[str] = None,
        failure_count: Optional[int] = None,
    ) -> None:
        super().__init__(message, _details(backend=backend, failure_count=failure_count))
        self.backend = backend
        self.failure_count = failure_count
