"""Find a TFLite interpreter: LiteRT first, then the legacy tflite-runtime, then TensorFlow.

Set ``EDGELOOP_INTERPRETER`` to ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow``
to force one (benchmarks and the legacy test do). ``EDGELOOP_XNNPACK=0`` loads models without
the default XNNPACK delegate (the plain built-in kernels), to tell a delegate problem from the rest.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from device.errors import InterpreterUnavailableError
from device.runtime.bundle import Quantization

BACKENDS: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")
_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}


def load_interpreter_class(preferred: str | None = None) -> tuple[type, str]:
    """Return ``(Interpreter class, backend name)`` for the first backend that imports."""
    wanted = preferred or os.environ.get("EDGELOOP_INTERPRETER") or None
    if wanted is not None and wanted not in BACKENDS:
        raise InterpreterUnavailableError(
            f"unknown interpreter backend {wanted!r}; expected one of {', '.join(BACKENDS)}"
        )
    order = (wanted,) if wanted else BACKENDS
    errors: list[str] = []
    for name in order:
        try:
            module: Any = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return module.Interpreter, name
    raise InterpreterUnavailableError(
        "no TFLite interpreter could be imported ("
        + "; ".join(errors)
        + "). Install the device extra: pip install 'edgeloop[device]'"
    )


def tensor_quantization(details: dict[str, Any]) -> Quantization | None:
    """A tensor's ``(scale, zero_point)`` from interpreter details; None for a float tensor."""
    scale, zero_point = details.get("quantization", (0.0, 0))
    return Quantization(float(scale), int(zero_point)) if scale else None


def interpreter_options(interpreter_cls: type) -> dict[str, Any]:
    """Extra constructor arguments: none, or the built-in kernels without XNNPACK if ``EDGELOOP_XNNPACK=0``."""
    if os.environ.get("EDGELOOP_XNNPACK", "1") != "0":
        return {}
    resolver = getattr(sys.modules.get(interpreter_cls.__module__), "OpResolverType", None)
    if resolver is None:
        raise InterpreterUnavailableError(f"EDGELOOP_XNNPACK=0: {interpreter_cls.__module__} cannot turn XNNPACK off")
    return {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
