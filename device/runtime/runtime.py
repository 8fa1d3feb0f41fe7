"""``Runtime``: load a bundle (or any .tflite) and run it on what a user has.

Load, set the inputs, invoke, read the outputs: the LiteRT example loop, with the bundle's own
preprocessing and every tensor's own quantization parameters applied. :meth:`Runtime.run` is the
model-level call (every input and output tensor by name); :meth:`Runtime.predict` and
:meth:`Runtime.classify` are the task-level calls, driven by the manifest's ``task``.
Depends on numpy and a TFLite interpreter only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import BundleError, InputError, TaskError
from device.runtime.bundle import (
    MANIFEST_NAME,
    InputSpec,
    Manifest,
    Normalization,
    OutputSpec,
    check_tflite_bytes,
    read_manifest,
    read_model_bytes,
)
from device.runtime.interpreter import interpreter_options, load_interpreter_class, tensor_quantization
from device.runtime.preprocess import softmax
from device.runtime.tensors import InputFeed, output_reader, sigmoid

_INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64")


@dataclass(frozen=True)
class Prediction:
    """One sample's result: the top classes, best first, with their probabilities (or scores)."""

    label: str
    index: int
    confidence: float
    top: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "index": self.index,
            "confidence": self.confidence,
            "top": [{"label": lab, "probability": p} for lab, p in self.top],
        }


def _dtype_name(details: dict[str, Any]) -> str:
    return np.dtype(details["dtype"]).name


def _sample_shape(details: dict[str, Any]) -> tuple[int, ...]:
    """A tensor's per-sample shape (without the batch axis); -1 where the model leaves a dimension open."""
    shape = [int(d) for d in details["shape"]]
    signature = [int(d) for d in details.get("shape_signature", shape)]
    if len(signature) != len(shape):
        signature = shape
    return tuple(sig if sig == -1 else dim for dim, sig in zip(shape[1:], signature[1:]))


class Runtime:
    """A loaded model, ready to run raw inputs.

    ``path`` is a bundle directory (``manifest.json`` + ``model.tflite``) or a plain .tflite file,
    whose inputs and outputs are then described from the model itself (task ``raw``).
    ``signature`` picks one signature of a multi-signature model (default: the manifest's
    ``model.signature``, else ``infer`` when present, else the only one).
    """

    def __init__(
        self,
        path: str | Path,
        num_threads: int | None = None,
        backend: str | None = None,
        signature: str | None = None,
    ) -> None:
        self.path = Path(path)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.manifest: Manifest | None = None
        content = self._read(self.path)
        interpreter_cls, self.backend = load_interpreter_class(backend)
        try:
            self._interpreter = interpreter_cls(model_content=content, num_threads=num_threads,
                                               **interpreter_options(interpreter_cls))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            hint = ""
            if "find op for builtin opcode" in str(exc):
                hint = (f" The {self.backend} runtime is older than this model's ops; re-export it with "
                        "'edgeloop cloud export --compat tflite-runtime', or install ai-edge-litert.")
            raise BundleError(f"{self.model_path}: the interpreter cannot load this model ({str(exc).strip()}).{hint}") from None
        self.task = self.manifest.task if self.manifest is not None else "raw"
        self.signature = self._choose_signature(signature)
        in_details, out_details, in_keys, out_keys = self._tensor_details()
        self.input_specs, self.output_specs = self._describe(in_details, out_details, in_keys, out_keys)
        self.input_spec, self.output_spec = self.input_specs[0], self.output_specs[0]
        raw_model = self.manifest is None
        self._feeds = tuple(InputFeed.build(spec, tensor_quantization(d), raw_model)
                            for spec, d in zip(self.input_specs, self._in_details))
        self._readers = tuple(output_reader(spec, tensor_quantization(d))
                              for spec, d in zip(self.output_specs, self._out_details))
        self._dequantize = self._readers[0]
        self._output_is_float = self.output_spec.dtype in ("float32", "float16")
        self._simple = len(self._feeds) == 1 and len(self._readers) == 1 and self._runner is None
        self._shapes = [tuple(int(d) for d in details["shape"]) for details in self._in_details]
        signatures = [details.get("shape_signature", details["shape"]) for details in self._in_details]
        resizable = all(len(s) > 0 and int(s[0]) == -1 for s in signatures)
        first = self._shapes[0]
        self._fixed_batch: int | None = None if resizable or not first else first[0]
        # Fast path for the common call, one uint8 image into a one-input model: a table lookup
        # replaces validation and normalization (uint8 can be neither non-finite nor outside [0, 255]).
        spec = self.input_spec
        shape = spec.shape
        self._single_shapes = {shape} | ({shape[:-1]} if len(shape) > 1 and shape[-1] == 1 else set())
        self._single_batch = (1, *shape)
        raw_range = spec.raw_range
        covers_uint8 = raw_range is None or (raw_range[0] <= 0 and raw_range[1] >= 255)
        passthrough = raw_model and spec.dtype == "uint8"
        lut = getattr(self._feeds[0].transform, "lut", None)
        one_table = lut is not None and lut.ndim == 1 and -1 not in shape
        self._uint8_lut = lut if covers_uint8 and one_table and not passthrough and len(self._feeds) == 1 else None
        # a uint8 tensor fed raw pixels unchanged (int8 export with --io uint8 and the model's own Rescaling):
        # the table maps every value to itself, so the image goes in as it is, without a pass over its pixels
        self._uint8_identity = (self._uint8_lut is not None and self._uint8_lut.dtype == np.uint8
                                and np.array_equal(self._uint8_lut, np.arange(256)))
        self._in_index = int(self._in_details[0]["index"])
        self._out_index = int(self._out_details[0]["index"])

    def __repr__(self) -> str:
        mode = self.manifest.mode if self.manifest else "raw .tflite"
        return f"Runtime({str(self.path)!r}, backend={self.backend!r}, mode={mode!r}, task={self.task!r})"

    # -- loading -----------------------------------------------------------------------------

    def _read(self, path: Path) -> bytes:
        if path.is_dir() or path.name == MANIFEST_NAME:
            bundle_dir = path if path.is_dir() else path.parent
            self.manifest = read_manifest(bundle_dir)
            self.model_path = bundle_dir / self.manifest.model_file
            return read_model_bytes(bundle_dir, self.manifest)
        self.model_path = path
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle directory or .tflite file") from None
        except OSError as exc:
            raise BundleError(f"{path}: cannot read ({exc})") from None
        check_tflite_bytes(content, path)
        return content

    def _choose_signature(self, wanted: str | None) -> str | None:
        """Which signature to run: the caller's, the manifest's, ``infer`` (trainable bundles), or the only one."""
        get_list = getattr(self._interpreter, "get_signature_list", None)
        signatures = dict(get_list()) if get_list is not None else {}
        self._signatures = signatures
        if wanted is None and self.manifest is not None:
            wanted = self.manifest.signature
        if wanted is not None:
            if wanted not in signatures:
                raise BundleError(f"{self.model_path}: no signature {wanted!r}; the model has "
                                  f"{', '.join(sorted(signatures)) or 'none'}")
            return wanted
        if len(signatures) > 1:
            if "infer" in signatures:
                return "infer"
            raise BundleError(f"{self.model_path}: the model has {len(signatures)} signatures "
                              f"({', '.join(sorted(signatures))}); choose one with signature=NAME (--signature NAME)")
        return next(iter(signatures), None)

    def _tensor_details(self) -> tuple[list[dict], list[dict], list[str], list[str]]:
        """Input/output tensor details and their names (signature keys where the model has them).

        A one-signature model runs its main subgraph directly (set_tensor/invoke/get_tensor, the
        fastest path); a signature of a multi-signature model runs through its signature runner.
        """
        self._runner = None
        it = self._interpreter
        in_details, out_details = list(it.get_input_details()), list(it.get_output_details())
        in_keys, out_keys = [d["name"] for d in in_details], [d["name"] for d in out_details]
        if self.signature is None:
            return in_details, out_details, in_keys, out_keys
        runner = it.get_signature_runner(self.signature)
        sig_in, sig_out = dict(runner.get_input_details()), dict(runner.get_output_details())
        by_index_in = {int(d["index"]): k for k, d in sig_in.items()}
        by_index_out = {int(d["index"]): k for k, d in sig_out.items()}
        main_subgraph = (len(self._signatures) == 1
                         and sorted(by_index_in) == sorted(int(d["index"]) for d in in_details)
                         and sorted(by_index_out) == sorted(int(d["index"]) for d in out_details))
        if main_subgraph:
            return (in_details, out_details, [by_index_in[int(d["index"])] for d in in_details],
                    [by_index_out[int(d["index"])] for d in out_details])
        self._runner = runner
        return list(sig_in.values()), list(sig_out.values()), list(sig_in), list(sig_out)

    def _describe(self, in_details: list[dict], out_details: list[dict], in_keys: list[str],
                  out_keys: list[str]) -> tuple[tuple[InputSpec, ...], tuple[OutputSpec, ...]]:
        """The I/O specs in the manifest's order, each checked against its tensor; or the model's own."""
        if self.manifest is None:
            self._in_details, self._out_details = in_details, out_details
            self._in_keys, self._out_keys = in_keys, out_keys
            inputs = []
            for key, d in zip(in_keys, in_details):
                dtype, quant = _dtype_name(d), tensor_quantization(d)
                raw_dtype = dtype if dtype in _INT_DTYPES and quant is None else "float32"
                inputs.append(InputSpec(shape=_sample_shape(d), dtype=dtype, raw_dtype=raw_dtype, raw_range=None,
                                        normalization=Normalization(), quantization=quant, name=key))
            outputs = []
            for i, (key, d) in enumerate(zip(out_keys, out_details)):
                shape = _sample_shape(d)
                labels = tuple(str(j) for j in range(shape[-1] if shape and shape[-1] > 0 else 1)) if i == 0 else ()
                outputs.append(OutputSpec(shape=shape, dtype=_dtype_name(d), labels=labels,
                                          kind="scores" if i == 0 else "values",
                                          quantization=tensor_quantization(d), name=key))
            return tuple(inputs), tuple(outputs)
        m = self.manifest
        in_order = self._match("input", m.inputs, in_details, in_keys)
        out_order = self._match("output", m.outputs, out_details, out_keys)
        self._in_details, self._in_keys = [in_details[i] for i in in_order], [in_keys[i] for i in in_order]
        self._out_details, self._out_keys = [out_details[i] for i in out_order], [out_keys[i] for i in out_order]
        return m.inputs, m.outputs

    def _match(self, kind: str, specs: tuple, details: list[dict], keys: list[str]) -> list[int]:
        """Which model tensor each manifest entry describes (by name; a lone tensor by position)."""
        where = self.path / MANIFEST_NAME
        if len(specs) != len(details):
            raise BundleError(f"{where}: the manifest lists {len(specs)} {kind}(s) but the model has {len(details)} "
                              f"({', '.join(keys)})")
        if len(specs) == 1:
            order = [0]
        else:
            order = []
            for spec in specs:
                found = [i for i, (k, d) in enumerate(zip(keys, details)) if spec.name in (k, d["name"])]
                if not found:
                    raise BundleError(f"{where}: the manifest's {kind} '{spec.name}' is not a tensor of the model "
                                      f"(its {kind}s: {', '.join(keys)})")
                order.append(found[0])
        for spec, i in zip(specs, order):
            shape, dtype = _sample_shape(details[i]), _dtype_name(details[i])
            fits = len(spec.shape) == len(shape) and all(s == m or -1 in (s, m) for s, m in zip(spec.shape, shape))
            if not fits or spec.dtype != dtype:
                what = kind if len(specs) == 1 else f"{kind} '{spec.name}'"
                raise BundleError(f"{where}: the manifest's {what} is {spec.dtype}{list(spec.shape)} "
                                  f"but the model's is {dtype}{list(shape)}")
        return order

    # -- the model level: every tensor -------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        return self.output_spec.labels

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.input_specs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.output_specs)

    def preprocess(self, x: object) -> tuple[np.ndarray, bool]:
        """One-input models: raw input -> ``(model-ready batch, was_single)``; raises :class:`InputError`."""
        lut = self._uint8_lut
        if lut is not None and type(x) is np.ndarray and x.dtype == np.uint8 and x.shape in self._single_shapes:
            if self._uint8_identity:
                return np.ascontiguousarray(x).reshape(self._single_batch), True
            return lut.take(x.reshape(self._single_batch)), True
        if len(self._feeds) != 1:
            batches, single = self._feed_all(x)
            return batches[0], single
        if isinstance(x, Mapping):
            x = self._by_name(x)[0]
        return self._feeds[0](x)

    def _by_name(self, inputs: Mapping[str, Any]) -> list[Any]:
        """The mapping's arrays in input order; a name is an input's name or its tensor's name."""
        names = self.input_names
        aliases = {d["name"]: spec.name for spec, d in zip(self.input_specs, self._in_details)}
        given = {aliases.get(k, k): v for k, v in inputs.items()}
        unknown = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        if unknown or missing:
            problem = f"unknown input(s) {unknown}" if unknown else f"missing input(s) {missing}"
            raise InputError(f"{problem}; this model takes {list(names)}")
        return [given[n] for n in names]

    def _feed_all(self, inputs: object) -> tuple[list[np.ndarray], bool]:
        """Every input, model-ready, with one batch size; ``was_single`` if each was one sample."""
        if isinstance(inputs, Mapping):
            values = self._by_name(inputs)
        elif len(self._feeds) == 1:
            values = [inputs]
        else:
            raise InputError(f"this model takes {len(self._feeds)} inputs {list(self.input_names)}; "
                             "pass a mapping of input name -> array")
        batches, singles = [], []
        for feed, value in zip(self._feeds, values):
            batch, single = feed(value)
            batches.append(batch)
            singles.append(single)
        sizes = {b.shape[0] for b in batches}
        if len(sizes) > 1:
            raise InputError("the inputs hold different numbers of samples: "
                             + ", ".join(f"'{n}' {b.shape[0]}" for n, b in zip(self.input_names, batches)))
        return batches, all(singles)

    def run(self, inputs: object, dequantize: bool = True) -> dict[str, np.ndarray]:
        """Run the model: ``inputs`` is an array (one-input models) or a mapping input name -> array.

        Returns output name -> array for every output, batch first (no batch axis if every input
        was one sample). Inputs are normalized (bundles) and quantized with each tensor's own
        parameters; quantized outputs are dequantized unless ``dequantize`` is off, which gives
        the tensors exactly as the interpreter returns them.
        """
        return self._run(inputs, dequantize)[0]

    def _run(self, inputs: object, dequantize: bool = True) -> tuple[dict[str, np.ndarray], bool]:
        """:meth:`run`, and whether every input was one sample."""
        batches, single = self._feed_all(inputs)
        outs = self._invoke_many(batches)
        result: dict[str, np.ndarray] = {}
        for spec, read, out in zip(self.output_specs, self._readers, outs):
            value = read(out) if dequantize else out
            result[spec.name] = value[0] if single and value.ndim else value
        return result, single

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        """One input batch -> the first output tensor (the classifier fast path)."""
        if not self._simple:
            return self._invoke_many([batch])[0]
        if batch.shape != self._shapes[0]:
            if self._fixed_batch is not None and batch.shape[0] != self._fixed_batch:
                return self._chunked([batch])[0]
            self._interpreter.resize_tensor_input(self._in_index, list(batch.shape))
            self._interpreter.allocate_tensors()
            self._shapes[0] = batch.shape
        self._interpreter.set_tensor(self._in_index, batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out_index)

    def _invoke_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        if self._fixed_batch is not None and batches[0].shape[0] != self._fixed_batch:
            return self._chunked(batches)
        return self._invoke_once(batches)

    def _invoke_once(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """One invoke on batches the model can take as they are (resizing open dimensions)."""
        if self._runner is not None:  # resizes and allocates by itself
            out = self._runner(**dict(zip(self._in_keys, batches)))
            return [out[k] for k in self._out_keys]
        it = self._interpreter
        resized = False
        for i, (details, batch) in enumerate(zip(self._in_details, batches)):
            if batch.shape != self._shapes[i]:
                it.resize_tensor_input(int(details["index"]), list(batch.shape))
                self._shapes[i] = batch.shape
                resized = True
        if resized:
            it.allocate_tensors()
        for details, batch in zip(self._in_details, batches):
            it.set_tensor(int(details["index"]), batch)
        it.invoke()
        return [it.get_tensor(int(details["index"])) for details in self._out_details]

    def _chunked(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """A fixed-batch model fed ``B`` samples per invoke, the last chunk padded with its last sample."""
        size = self._fixed_batch
        assert size is not None
        n = batches[0].shape[0]
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            chunk = [b[start : start + size] for b in batches]
            m = chunk[0].shape[0]
            if m < size:
                chunk = [np.concatenate([c, np.repeat(c[-1:], size - m, axis=0)]) for c in chunk]
            outs = self._invoke_once(chunk)
            parts.append([o[:m] if o.ndim and o.shape[0] == size else o for o in outs])
        return [np.concatenate(p) if p[0].ndim else p[-1] for p in zip(*parts)]

    # -- the task level: outputs[0] ----------------------------------------------------------

    def logits(self, x: object, check_finite: bool = True) -> np.ndarray:
        """The first output, dequantized: ``(N, …)`` (no batch axis for one sample).

        Non-finite outputs raise :class:`BundleError` unless ``check_finite`` is off (export
        verification turns it off to count them).
        """
        if self._simple:
            batch, single = self.preprocess(x)
            out = self._dequantize(self._invoke(batch))
        else:
            batches, single = self._feed_all(x)
            out = self._dequantize(self._invoke_many(batches)[0])
        # a dequantized integer output is finite by construction
        if check_finite and self._output_is_float and not np.isfinite(out).all():
            raise self._non_finite()
        return out[0] if single else out

    def predict(self, x: object) -> np.ndarray:
        """What the task says the first output means, ``(N, …)`` float32 (no batch axis for one sample).

        classification: class probabilities (softmax of logits); multilabel: per-label
        probabilities (sigmoid of logits); regression and raw: the dequantized values.
        """
        kind = self.output_spec.kind
        if kind != "logits" or self.task not in ("classification", "multilabel"):
            return self.logits(x)
        logits = self.logits(x, check_finite=False)
        probs = softmax(logits) if self.task == "classification" else sigmoid(logits)
        # NaN or +inf in a row of logits makes that whole row NaN, so one column tells
        if self._output_is_float:
            first = probs[..., 0]
            if not (math.isfinite(first) if first.ndim == 0 else np.isfinite(first).all()):
                raise self._non_finite()
        return probs

    def _non_finite(self) -> BundleError:
        return BundleError(f"{self.model_path}: the model produced non-finite outputs (a broken export?)")

    def classify(self, x: object, k: int = 3) -> list[Prediction]:
        """Top-``k`` labelled predictions for each sample (a list even for one sample).

        For a multilabel model the scores are independent per label (they need not sum to 1).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.task not in ("classification", "multilabel", "raw") or not self.labels:
            raise TaskError(f"{self.path}: a {self.task} model has no classes to rank; use predict() or run() "
                            "('edgeloop device predict --json' prints its outputs)")
        probs = self.predict(x)
        if probs.ndim == 0 or probs.shape[-1] != len(self.labels) or probs.ndim > 2:
            raise TaskError(f"{self.path}: output '{self.output_spec.name}' has shape {list(self.output_spec.shape)}, "
                            "not one score per class; use run()")
        probs = np.atleast_2d(probs)
        k = min(k, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        labels = self.labels
        results = []
        for row, idx in zip(probs, order):
            top = tuple((labels[i], float(row[i])) for i in idx)
            results.append(Prediction(label=top[0][0], index=int(idx[0]), confidence=top[0][1], top=top))
        return results

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``edgeloop device info`` and logs."""
        info: dict[str, Any] = {
            "path": str(self.path),
            "backend": self.backend,
            "task": self.task,
            "signature": self.signature,
            "input": {"shape": list(self.input_spec.shape), "dtype": self.input_spec.dtype},
            "output": {"shape": list(self.output_spec.shape), "dtype": self.output_spec.dtype,
                       "kind": self.output_spec.kind},
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "layout": s.layout}
                       for s in self.input_specs],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind}
                        for s in self.output_specs],
            "labels": list(self.labels),
        }
        if self.manifest is not None:
            info.update(name=self.manifest.name, version=self.manifest.version, mode=self.manifest.mode,
                        sha256=self.manifest.sha256, size_bytes=self.manifest.size_bytes)
        return info
