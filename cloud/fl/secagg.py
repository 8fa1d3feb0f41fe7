"""Secure aggregation rounds: Flower's SecAgg+ protocol, then the ``federated`` core on the sum.

With SecAgg+ (Bell et al., CCS 2020) the server never sees one device's update, only the
sample-weighted mean of all of them, unmasked in the protocol's last stage. So per-client
validation, robust aggregators and DP-FedAvg's per-client clipping cannot run: the core gets one
update, the mean, with the total sample count, and its norm bound and finiteness checks apply to
that. Flower's legacy ``Strategy`` API is the workflow's interface; :class:`_Collect` only samples
the devices and hands the unmasked mean back.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _collect_strategy() -> Any:
    from flwr.server.strategy import Strategy

    class _Collect(Strategy):
        """Sample every connected device; keep what SecAgg+ unmasks."""

        def __init__(self, fit_config: dict[str, Any], nodes: list[int]) -> None:
            self.fit_config, self.nodes = fit_config, set(nodes)
            self.results: list[Any] = []
            self.failures: list[Any] = []

        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            from flwr.common import FitIns

            proxies = [p for cid, p in sorted(client_manager.all().items()) if p.node_id in self.nodes]
            return [(p, FitIns(parameters, dict(self.fit_config))) for p in proxies]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
            self.results, self.failures = list(results), list(failures)
            return None, {}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> None:
            return None

    return _Collect


def secure_round(grid: Any, context: Any, weights: list[np.ndarray], nodes: list[int], round_no: int,
                 fit_config: dict[str, Any], timeout: float) -> tuple[list[np.ndarray] | None, int, int, list[str]]:
    """One SecAgg+ round: ``(mean weights or None, total samples, devices in the sum, failure reasons)``."""
    from flwr.app import ConfigRecord
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.compat.app_utils import start_update_client_manager_thread
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    strategy = _collect_strategy()(fit_config, nodes)
    legacy = LegacyContext(context, strategy=strategy)
    thread, stop, ready = start_update_client_manager_thread(grid, legacy.client_manager)
    try:
        ready.wait(timeout=30)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_no})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(weights), keep_input=True)
        # every device holds one share per neighbour; any 2/3 of them reconstruct a dropped device's mask
        SecAggPlusWorkflow(num_shares=len(nodes), reconstruction_threshold=max(2, (2 * len(nodes)) // 3),
                           timeout=timeout)(grid, legacy)
    finally:
        stop.set()
        thread.join(timeout=10)
    failures = [str(f) for f in strategy.failures]
    if not strategy.results:
        return None, 0, 0, failures
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)
    total = int(sum(res.num_examples for _, res in strategy.results))
    return [np.asarray(a, np.float32) for a in mean], total, len(strategy.results), failures
