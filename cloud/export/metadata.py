"""Standard TFLite metadata in an exported ``.tflite``: what Android's Task Library, ML Kit and
MediaPipe Tasks read (name, description, version, input normalization, labels, output type).

Written and read with MediaPipe's metadata library (``mediapipe.tasks.python.metadata``), the
maintained successor of tflite-support's writers; nothing here builds a flatbuffer by hand.

MediaPipe's wheels since 0.10.30 ship the pure-Python metadata module but no longer its native
``_pywrap_metadata_version`` extension, so ``import`` fails. The releases that still ship it
(<= 0.10.21) pin numpy < 2 and protobuf < 5, and tflite-support 0.4.4 (2023) pins protobuf < 4:
neither installs beside TensorFlow 2.21. :func:`_parser_version_module` supplies the one function
the extension exported, ``GetMinimumMetadataParserVersion``, ported from MediaPipe's
``metadata_version.cc`` onto the library's own generated schema classes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.runtime.bundle import InputSpec, OutputSpec

LABELS_FILE = "labels.txt"
_FIXED_MTIME = 1577836800  # 2020-01-01 UTC
_MISSING = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"

# Schema members added after metadata 1.0.0 and the parser version that reads them (metadata_version.cc)
_VOCABULARY, _INPUT_UNITS, _OUTPUT_UNITS = (1, 0, 1), (1, 1, 0), (1, 1, 0)
_BERT, _SENTENCEPIECE, _TENSOR_GROUPS, _REGEX = (1, 1, 0), (1, 1, 0), (1, 2, 0), (1, 2, 1)
_AUDIO, _SCANN, _FILE_VERSION = (1, 3, 0), (1, 4, 0), (1, 4, 1)


def minimum_parser_version(metadata_buf: bytes) -> str:
    """The oldest metadata parser that can read ``metadata_buf`` (a ``ModelMetadata`` flatbuffer)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buf), 0))
    version = (1, 0, 0)

    def bump(v: tuple[int, int, int]) -> None:
        nonlocal version
        version = max(version, v)

    def files(items: list[Any] | None) -> None:
        for f in items or []:
            if f.type == fb.AssociatedFileType.VOCABULARY:
                bump(_VOCABULARY)
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                bump(_SCANN)
            if f.version is not None:
                bump(_FILE_VERSION)

    def units(items: list[Any] | None) -> None:
        for u in items or []:
            bump({fb.ProcessUnitOptions.BertTokenizerOptions: _BERT,
                  fb.ProcessUnitOptions.SentencePieceTokenizerOptions: _SENTENCEPIECE,
                  fb.ProcessUnitOptions.RegexTokenizerOptions: _REGEX}.get(u.optionsType, (1, 0, 0)))

    for sub in md.subgraphMetadata or []:
        for tensor in (sub.inputTensorMetadata or []) + (sub.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content is not None and tensor.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                bump(_AUDIO)
        files(sub.associatedFiles)
        if sub.inputProcessUnits is not None:
            bump(_INPUT_UNITS)
            units(sub.inputProcessUnits)
        if sub.outputProcessUnits is not None:
            bump(_OUTPUT_UNITS)
            units(sub.outputProcessUnits)
        if sub.inputTensorGroups is not None or sub.outputTensorGroups is not None:
            bump(_TENSOR_GROUPS)
    files(md.associatedFiles)
    return ".".join(str(v) for v in version)


def _parser_version_module() -> None:
    """Register the missing native module (see the module docstring) unless the wheel has it."""
    if _MISSING in sys.modules:
        return
    try:
        __import__(_MISSING)
        return
    except ImportError:
        pass
    module = types.ModuleType(_MISSING)
    module.GetMinimumMetadataParserVersion = minimum_parser_version  # type: ignore[attr-defined]
    parts = _MISSING.split(".")
    for i in range(3, len(parts)):  # mediapipe.tasks.cc … .python: empty packages holding it
        name = ".".join(parts[:i])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []  # type: ignore[attr-defined]
            sys.modules[name] = package
            setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], package)
    sys.modules[_MISSING] = module
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)


@contextlib.contextmanager
def _fixed_zip_time() -> Iterator[None]:
    """The library packs associated files with ``ZipFile.writestr``, which stamps each entry with
    the current time; a fixed stamp keeps an export byte-reproducible from its seed."""
    import zipfile

    real = zipfile.time
    zipfile.time = types.SimpleNamespace(time=lambda: float(_FIXED_MTIME), localtime=time.gmtime)  # type: ignore[assignment]
    try:
        yield
    finally:
        zipfile.time = real  # type: ignore[assignment]


def _library() -> tuple[Any, Any, Any, Any]:
    _parser_version_module()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.metadata import schema_py_generated as schema_fb
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info

    return metadata, metadata_info, fb, schema_fb


_KIND_TEXT = {
    "logits": "logits: apply softmax for class probabilities",
    "probabilities": "class probabilities (softmax applied in the model)",
    "scores": "independent per-label scores in [0, 1] (sigmoid applied in the model)",
    "values": "regression values",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the metadata says about the model as a whole."""

    name: str
    description: str
    version: str
    task: str


def embed_metadata(tflite: bytes, info: ModelInfo, inp: InputSpec, out: OutputSpec) -> bytes:
    """``tflite`` with TFLite metadata (and, when there are labels, ``labels.txt``) packed inside.

    Images get image metadata (colour space, normalization); vectors and sequences get feature
    metadata with the same normalization unit. Normalization is in raw units: the model takes
    ``(raw - mean) / std``; a uint8 input that takes raw pixels is described as mean 0, std 1.
    """
    metadata, metadata_info, fb, schema_fb = _library()
    from mediapipe.tasks.python.metadata.metadata_writers import writer_utils

    in_type = writer_utils.get_input_tensor_types(bytearray(tflite))[0]
    out_type = writer_utils.get_output_tensor_types(bytearray(tflite))[0]
    mean, std = list(inp.normalization.mean), list(inp.normalization.std)
    if len(mean) != len(std):
        n = max(len(mean), len(std))
        mean, std = mean * (n // len(mean)), std * (n // len(std))
    channels = inp.shape[-1] if inp.layout == "image" else 0
    if inp.layout == "image" and channels in (1, 3):
        space = fb.ColorSpaceType.RGB if channels == 3 else fb.ColorSpaceType.GRAYSCALE
        input_md = metadata_info.InputImageTensorMd(
            name=inp.name, description=f"{inp.shape[0]}x{inp.shape[1]} {'RGB' if channels == 3 else 'grayscale'} image, "
            f"{inp.dtype} input", norm_mean=mean, norm_std=std, color_space_type=space, tensor_type=in_type,
        ).create_metadata()
    else:
        input_md = metadata_info.TensorMd(
            name=inp.name, description=f"{inp.layout} {list(inp.shape)}, {inp.dtype} input").create_metadata()
        unit = fb.ProcessUnitT()
        unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
        unit.options = fb.NormalizationOptionsT()
        unit.options.mean, unit.options.std = mean, std
        input_md.processUnits = [unit]
    with tempfile.TemporaryDirectory() as tmp:
        files: list[str] = []
        if out.labels:
            path = os.path.join(tmp, LABELS_FILE)
            Path(path).write_text("\n".join(out.labels) + "\n")
            os.utime(path, (_FIXED_MTIME, _FIXED_MTIME))  # packed as a zip entry: same labels, same bytes
            files.append(path)
        if out.labels and info.task in ("classification", "multilabel"):
            output_md = metadata_info.ClassificationTensorMd(
                name=out.kind, description=_KIND_TEXT[out.kind],
                label_files=[metadata_info.LabelFileMd(path)] if files else None, tensor_type=out_type,
            ).create_metadata()
        else:
            output_md = metadata_info.TensorMd(name=out.kind, description=_KIND_TEXT[out.kind]).create_metadata()
        model_md = metadata_info.GeneralMd(name=info.name, version=info.version,
                                           description=info.description).create_metadata()
        subgraph = fb.SubGraphMetadataT()
        subgraph.inputTensorMetadata = [input_md]
        subgraph.outputTensorMetadata = [output_md]
        model_md.subgraphMetadata = [subgraph]
        import flatbuffers

        builder = flatbuffers.Builder(0)
        builder.Finish(model_md.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
        populator = metadata.MetadataPopulator.with_model_buffer(bytearray(tflite))
        populator.load_metadata_buffer(builder.Output())
        if files:
            populator.load_associated_files(files)
        with _fixed_zip_time():
            populator.populate()
        content = bytes(populator.get_model_buffer())
        del populator  # its destructor removes a temp file; run it now, not at interpreter exit
        return content


def read_metadata(tflite: bytes) -> dict[str, Any]:
    """The metadata of ``tflite`` as the library's JSON, plus ``labels`` from the packed label file.

    Raises ``ValueError`` when the model has no metadata.
    """
    metadata, _, _, _ = _library()
    displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(tflite))
    data: dict[str, Any] = json.loads(displayer.get_metadata_json())
    packed = displayer.get_packed_associated_file_list()
    data["packed_files"] = list(packed)
    if LABELS_FILE in packed:
        data["labels"] = displayer.get_associated_file_buffer(LABELS_FILE).decode("utf-8").splitlines()
    return data
