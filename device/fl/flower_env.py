"""Flower settings every device process shares: no telemetry or update checks, and fast object pulls.

The lowest module of ``device.fl``: the SuperNode supervisor (:mod:`device.fl.client`), the lean
launcher (:mod:`device.fl.clientapp`) and the cloud's ServerApp all import it, and it imports
nothing of edgeloop.
"""

from __future__ import annotations

# Flower's defaults we never want on a device or in CI
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
}


def fast_object_pulls(initial_backoff: float = 0.02, backoff_cap: float = 0.5) -> None:
    """Flower 1.42 pulls a message's objects with an exponential back-off that starts at 1 s, so a
    reply pulled a moment before its arrays are stored costs a full second at every hop (SuperNode,
    ClientApp, ServerApp). Start it at 20 ms instead, in this process."""
    from flwr.supercore.inflatable import inflatable_utils

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        if fn.__kwdefaults__ and "initial_backoff" in fn.__kwdefaults__:
            fn.__kwdefaults__["initial_backoff"] = initial_backoff
            fn.__kwdefaults__["backoff_cap"] = backoff_cap
