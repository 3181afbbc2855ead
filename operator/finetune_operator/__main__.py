"""`python -m finetune_operator [flags]`: run the operator (see `--help`; every flag has an FTO_* variable).

Runs kopf standalone (no peering objects) on the watched namespaces. With `--leader-election` (the chart's
default, two replicas) kopf starts only once this process holds the Lease (`finetune_operator.core.leader`); a
standby answers the liveness probe meanwhile. A leader that can no longer renew its Lease exits at once (the
kubelet restarts it as a standby): its reconcile threads must not write beside the next leader's. The same exit
follows a write refused by the fence (`finetune_operator.core.leader.Fence`: a leader frozen past its lease that
wakes up): exiting, not returning to standby, because a process that lost the Lease may have threads mid-pass
with a view of the world the new leader has already changed; a fresh process starts from an empty store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf

from finetune_operator import handlers  # noqa: F401 - registers the handlers
from finetune_operator.core.kube import Kube
from finetune_operator.core.leader import Fence, LeaderElector
from finetune_operator.core.settings import Settings, parse_args

log = logging.getLogger("finetune_operator")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _operator_kwargs(settings: Settings, identity: str = "", fence: Fence | None = None) -> dict[str, Any]:
    """kopf's arguments; the memo carries our settings and, when elected, this replica's identity and the fence
    its API client asks before each write (handlers.startup)."""
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    scope: dict[str, Any] = {"namespaces": list(settings.namespaces)} if settings.namespaces else {"clusterwide": True}
    memo = kopf.Memo(settings=settings, identity=identity, fence=fence)
    return {"standalone": True, "memo": memo, "liveness_endpoint": liveness, **scope}


def _exit_lost(reason: str) -> None:
    """Step down by exiting at once (os._exit, not a graceful stop: threads in flight must not write once
    another replica may lead); the kubelet restarts the container as a standby."""
    log.error("leader election: leadership lost (%s); exiting so that only the new leader acts", reason)
    logging.shutdown()
    os._exit(1)


def _lease_namespace(settings: Settings) -> str:
    if settings.leader_election_namespace:
        return settings.leader_election_namespace
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


async def _standby_health(port: int) -> Any:
    """/healthz while waiting for the Lease (kopf serves it once it runs): a standby is alive, not stuck."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="standby: waiting for the leader election Lease\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


async def _run_elected(settings: Settings) -> None:
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    elector = LeaderElector(
        Kube.from_environment(pool_size=2, identity=identity),
        _lease_namespace(settings),
        settings.leader_election_lease,
        identity,
    )
    standby = await _standby_health(settings.health_port) if settings.health_port else None
    await elector.acquire()
    if standby is not None:
        await standby.cleanup()
    fence = Fence(elector, _exit_lost)
    operator = asyncio.create_task(kopf.operator(**_operator_kwargs(settings, identity, fence)))
    keeper = asyncio.create_task(elector.keep())
    done, _ = await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
    if keeper in done:
        _exit_lost("the Lease could not be renewed in time")
    keeper.cancel()
    await asyncio.get_running_loop().run_in_executor(None, elector.release)
    operator.result()


def run(settings: Settings) -> None:
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=False, debug=False, log_format=log_format)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if settings.leader_election:
        asyncio.run(_run_elected(settings))
    else:
        asyncio.run(kopf.operator(**_operator_kwargs(settings)))


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
