"""The hub stop when the hub cannot be reached: one failure to journal per outage, a try at every check."""

from __future__ import annotations

from lamplighter.model import StopOutcome
from lamplighter.platforms.jupyterhub import HubApi, HubServer, HubStopper
from lamplighter.remote import Connection
from tests.decisions import STOP
from tests.ports import refused_port


async def test_an_unreachable_hub_is_one_failure_then_tries_that_are_not_news() -> None:
    server = HubServer(user="ann", name="", path="/user/ann/", started=None, last_activity=None)
    with refused_port() as port:
        async with Connection(f"http://127.0.0.1:{port}/hub/api/", token="t", timeout_s=2) as conn:
            api = HubApi(conn)
            stopper = HubStopper(api, server, verify_timeout_s=1)
            results = [await stopper.stop(STOP) for _ in range(3)]
    # Every check asked the hub (no backoff: it must stop on time once the hub is back) ...
    assert api.requests == 3
    assert [r.outcome for r in results] == [StopOutcome.FAILED] * 3
    # ... but only the first failure is journaled: the agent logs the others at debug.
    assert [r.again for r in results] == [False, True, True]
    assert "cannot connect" in results[0].detail or "refused" in results[0].detail, results[0].detail
