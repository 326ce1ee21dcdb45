"""Flask: ``FlaskCacheService(app)`` or ``init_app(app)``, then ``get_cache_service()``."""

from __future__ import annotations

from typing import Optional

from flask import Flask

from .cache_service import CacheService
from .config import CacheFactoryConfig


class FlaskCacheService(CacheService):
    """A ``CacheService`` configured from ``app.config`` (``CACHE_*`` keys)
    and kept in ``app.extensions["cache_service"]``."""

    def __init__(self, app: Optional[Flask] = None) -> None:
        super().__init__()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Reads ``app.config``, starts the service, registers it on ``app``."""
        config = CacheFactoryConfig.from_flask_config(app.config)
        config.logger = app.logger
        self.init_config(config, logger=app.logger)
        if not hasattr(app, "extensions"):
            app.extensions = {}  # type: ignore[attr-defined]
        app.extensions["cache_service"] = self


def get_cache_service(app: Optional[Flask] = None) -> FlaskCacheService:
    """The service registered on ``app`` (default: ``flask.current_app``)."""
    if app is None:
        from flask import current_app

        app = current_app  # type: ignore[assignment]
    if "cache_service" not in app.extensions:
        raise RuntimeError(
            "CacheService not found in app.extensions. Make sure to call cache_service.init_app(app) first."
        )
    return app.extensions["cache_service"]
