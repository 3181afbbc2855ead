"""`python -m finetune_operator [flags]`: run the operator (see `--help`; every flag has an FTO_* variable).

Runs kopf standalone (no peering objects: one replica, Recreate strategy) on the watched namespaces.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf

from finetune_operator import handlers  # noqa: F401 - registers the handlers
from finetune_operator.settings import Settings, parse_args


def run(settings: Settings) -> None:
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=False, debug=False, log_format=log_format)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    scope = {"namespaces": list(settings.namespaces)} if settings.namespaces else {"clusterwide": True}
    asyncio.run(kopf.operator(standalone=True, memo=kopf.Memo(settings=settings), liveness_endpoint=liveness, **scope))


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
