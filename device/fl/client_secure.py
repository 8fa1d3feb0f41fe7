"""The device ClientApp behind Flower's SecAgg+ client mod: the update leaves the device masked.

A separate module so that plain rounds never import Flower's secure-aggregation code. The training
is :func:`device.fl.client.train_reply`; only the message format (Flower's legacy FitIns/FitRes,
which the SecAgg+ mod speaks) differs.
"""

from __future__ import annotations

from typing import Any

from device.fl.client import train_reply


def _make_app() -> Any:
    from flwr.app import Context, Message
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    client_app = ClientApp(mods=[secaggplus_mod])

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        weights, metrics = train_reply(parameters_to_ndarrays(fitins.parameters), fitins.config,
                                       dict(context.node_config))
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), int(metrics["num-examples"]),
                        {k: float(v) for k, v in metrics.items()})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return client_app


app = _make_app()
