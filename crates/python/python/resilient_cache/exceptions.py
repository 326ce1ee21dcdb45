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


class CacheConnectionError(CacheError):
    """L2 could not be reached (never raised by get/set: they degrade to L1)."""

    def __init__(
        self,
        message: str = "Failed to connect to cache backend",
        backend: Optional[str] = None,
        original_error: Optional[BaseException] = None,
    ) -> None:
        details: dict[str, Any] = {}
        if backend:
            details["backend"] = backend
        if original_error is not None:
            details["original_error"] = str(original_error)
            details["error_type"] = type(original_error).__name__
        super().__init__(message, details)
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
        details: dict[str, Any] = {}
        if key:
            details["key"] = key
        if serializer:
            details["serializer"] = serializer
        if original_error is not None:
            details["original_error"] = str(original_error)
            details["error_type"] = type(original_error).__name__
        super().__init__(message, details)
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
        details: dict[str, Any] = {}
        if config_key:
            details["config_key"] = config_key
        if config_value is not None:
            details["config_value"] = str(config_value)
        super().__init__(message, details)
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
        details: dict[str, Any] = {}
        if backend:
            details["backend"] = backend
        if failure_count is not None:
            details["failure_count"] = failure_count
        super().__init__(message, details)
        self.backend = backend
        self.failure_count = failure_count
