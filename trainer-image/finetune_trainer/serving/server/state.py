"""The server's model state: loading, ready (an engine serves it) or failed (with the reason).

Why apart from the app: both the HTTP layer (readiness, 503/404 answers) and the loader thread touch
it, and it holds the one rule every /v1 route applies first: the model must be loaded and be the one
the request names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from finetune_trainer.core.errors import TrainerError
from finetune_trainer.serving.auth import ALL, Access
from finetune_trainer.serving.server.config import ServeSettings
from finetune_trainer.serving.server.engine import Engine
from finetune_trainer.serving.server.metrics import ServerMetrics
from finetune_trainer.serving.server.protocol import APIError, now

log = logging.getLogger(__name__)


class ModelState:
    """Where the model stands: loading, ready (with its engine) or failed (with the reason)."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: Engine | None = None
        self.error: str | None = None
        self.created = now()
        self._owns_engine = False

    @property
    def status(self) -> Literal["loading", "ready", "failed"]:
        if self.engine is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    def serve(self, engine: Engine, owned: bool) -> None:
        self._owns_engine = owned
        self.engine = engine.start()
        self.metrics.ready.set(1)

    def load(self, on_failure: Callable[[BaseException], None] | None) -> None:
        """Fetch and load the model, then start the engine (runs on its own thread)."""
        from finetune_trainer.serving.server import loader

        config = self.settings.config
        try:
            loaded = loader.load(config, self.settings.work_dir, self.settings.device)
            self.serve(Engine(loaded, max_batch_size=config.max_concurrency), owned=True)  # adapters: api.py
            log.info("serving %s (run %s)", config.served_model_name, config.run)
        except Exception as error:
            reason = error.message if isinstance(error, TrainerError) else f"{type(error).__name__}: {error}"
            self.error = reason
            log.error("loading the model failed: %s", reason)
            if on_failure is not None:
                on_failure(error)

    def close(self) -> None:
        if self.engine is not None and self._owns_engine:
            self.engine.stop()

    def engine_for(self, model: str, access: Access = ALL) -> Engine:
        """The engine, if `model` is the served name (or, on a shared server, a loaded adapter's), the caller's
        key reaches it (`access`) and the model is loaded; else the right APIError. A model the key does not
        reach is answered exactly as one that does not exist (404), before the readiness check."""
        if not access.allows(model):
            raise APIError(
                404, f"The model '{model}' does not exist", "invalid_request_error", "model", "model_not_found"
            )
        if self.engine is None:
            detail = f": {self.error}" if self.error else ""
            raise APIError(
                503, f"the model is not ready ({self.status}{detail})", "server_error", None, "model_not_ready"
            )
        if model != self.settings.config.served_model_name and model not in self.engine.adapters():
            raise APIError(
                404, f"The model '{model}' does not exist", "invalid_request_error", "model", "model_not_found"
            )
        return self.engine
