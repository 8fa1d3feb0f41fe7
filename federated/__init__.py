"""Federated learning: the FedAvg family on plain numpy arrays.

The aggregation core (this package's top level) imports numpy only; ``dp-accounting`` is
loaded when DP is on, and TensorFlow only by the simulator's client trainer.
"""

from federated.dp import DPConfig
from federated.errors import ConfigError, FederatedError, RoundRefused, StateError, UpdateRejected
from federated.fedbuff import Arrival, BufferConfig, BufferedServer
from federated.server import AGGREGATORS, ClientUpdate, RoundOutcome, Server, ServerConfig
from federated.server_opt import STRATEGIES
from federated.staleness import Staleness
from federated.state import ServerState, load_state, save_state
from federated.weights import Weights

__all__ = [
    "AGGREGATORS",
    "STRATEGIES",
    "Arrival",
    "BufferConfig",
    "BufferedServer",
    "ClientUpdate",
    "ConfigError",
    "DPConfig",
    "FederatedError",
    "RoundOutcome",
    "RoundRefused",
    "Server",
    "ServerConfig",
    "ServerState",
    "StateError",
    "Staleness",
    "UpdateRejected",
    "Weights",
    "load_state",
    "save_state",
]
