"""The PostgreSQL 18 container path: used when a Docker engine is reachable."""

from __future__ import annotations

import pytest

import flows_core as flows
from flows_pg import PostgresStore

pytestmark = pytest.mark.pg


def _docker_reachable() -> str | None:
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return "the docker SDK is not installed (pip install 'flows[dev]')"
    try:
        docker.from_env(timeout=3).ping()
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__}); set FLOWS_TEST_DSN instead"
    return None


@flows.workflow("container-wf")
async def container_wf(ctx: flows.WorkflowContext, n: int) -> int:
    await ctx.sleep(0.05)
    return n * 2


async def test_postgres_18_container_runs_a_workflow() -> None:
    reason = _docker_reachable()
    if reason is not None:
        pytest.skip(reason)
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:18", driver=None) as pg:
        dsn = pg.get_connection_url()
        async with PostgresStore(dsn) as store:
            await store.migrate()
            engine = flows.Engine(store)
            worker = flows.Worker(store, workflows=[container_wf], poll_interval=0.05)
            import asyncio

            task = asyncio.ensure_future(worker.run())
            try:
                run = await engine.start(container_wf, 21)
                assert await run.result(timeout=30) == 42
            finally:
                await worker.stop()
                await task
