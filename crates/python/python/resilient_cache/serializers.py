"""How values are written to L2: a registry of named serializers.

Built in: ``json`` (the default: UTF-8 JSON, readable by the original
package and by Rust services sharing the namespace) and ``pickle`` (any
Python object, for namespaces the original package wrote with it).

Unpickling runs code chosen by whoever wrote the bytes, so ``pickle`` is
never used unless a configuration names it. See the README's section on
migrating a pickle namespace.
"""

from __future__ import annotations

import json
import pickle
from abc import ABC, abstractmethod
from typing import Any


class CacheSerializer(ABC):
    """A serializer: ``serialize`` gives bytes, ``deserialize`` takes them back.

    ``deserialize`` raising any exception makes the read a miss: the error is
    counted (``get_stats()["errors"]["decode"]``) and the key removed.
    """

    @abstractmethod
    def serialize(self, value: Any) -> bytes:
        """Encodes ``value``; raises when it cannot."""

    @abstractmethod
    def deserialize(self, data: bytes) -> Any:
        """Decodes ``data``; raises when the bytes are not valid."""


class PickleSerializer(CacheSerializer):
    """pickle, highest protocol. Only for trusted Redis servers: unpickling runs code."""

    def __repr__(self) -> str:
        return "PickleSerializer()"

    def serialize(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # PicklingError, TypeError, AttributeError...
            raise ValueError(f"cannot serialize with pickle: {e}") from e

    def deserialize(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as e:
            raise ValueError(f"cannot deserialize with pickle: {e}") from e


class JsonSerializer(CacheSerializer):
    """UTF-8 JSON: dict, list, str, int, float, bool, None."""

    def __repr__(self) -> str:
        return "JsonSerializer()"

    def serialize(self, value: Any) -> bytes:
        try:
            return json.dumps(value, ensure_ascii=False).encode("utf-8")
        except Exception as e:
            raise ValueError(f"cannot serialize with json: {e}") from e

    def deserialize(self, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot deserialize with json: {e}") from e


_REGISTRY: dict[str, type[CacheSerializer]] = {
    "json": JsonSerializer,
    "pickle": PickleSerializer,
}


def register_serializer(name: str, serializer_class: type[CacheSerializer]) -> None:
    """Registers ``serializer_class`` (a ``CacheSerializer`` subclass) under ``name``."""
    if not isinstance(serializer_class, type) or not issubclass(serializer_class, CacheSerializer):
        raise TypeError(
            f"serializer_class must be a subclass of CacheSerializer, got {serializer_class!r}"
        )
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"serializer name {name!r} is not allowed: a non-empty string")
    _REGISTRY[name] = serializer_class


def get_serializer(name: str) -> CacheSerializer:
    """A new instance of the serializer registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown serializer '{name}'. Available serializers: {', '.join(list_serializers())}"
        )
    return _REGISTRY[name]()


def list_serializers() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def serializer_name(serializer: CacheSerializer) -> str:
    """The registered name of ``serializer``'s class, else its class name."""
    for name, cls in _REGISTRY.items():
        if type(serializer) is cls:
            return name
    return type(serializer).__name__
