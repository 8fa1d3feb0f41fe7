"""What a user has, read into what :meth:`device.Runtime.run` takes.

Images (one sample), ``.npy`` (one sample or a batch), ``.npz`` (one array per input name, or the
only array), ``.csv`` (one sample per row, an optional header row) and ``-`` (JSON on stdin: a
nested list, or an object input name -> nested list). Values stay in raw units; the runtime applies
the bundle's own preprocessing.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from device.errors import InputError
from device.runtime.bundle import InputSpec
from device.runtime.images import IMAGE_SUFFIXES, read_image

SUFFIXES = (".npy", ".npz", ".csv", *IMAGE_SUFFIXES)


def read_input(source: str | Path, specs: tuple[InputSpec, ...] | tuple[int, ...], invert: bool = False,
               stdin: IO[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """One input argument -> an array (one-input models) or a mapping input name -> array.

    ``specs`` are the model's input specs (a bare shape tuple is taken as one input of that shape).
    ``invert`` turns dark-on-light uint8 images into light-on-dark (``255 - x``).
    """
    if specs and isinstance(specs[0], int):
        specs = (InputSpec(shape=tuple(specs), dtype="float32"),)  # type: ignore[arg-type]
    specs = tuple(specs)  # type: ignore[assignment]
    if str(source) == "-":
        return _from_json(stdin if stdin is not None else sys.stdin, specs)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(path)
        return _one_input(path, specs, (255 - arr) if invert and arr.dtype == np.uint8 else arr)
    if suffix == ".npz":
        return _from_npz(path, specs)
    if suffix == ".csv":
        return _one_input(path, specs, read_csv(path))
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown input type; give an image ({', '.join(IMAGE_SUFFIXES)}), a .npy, .npz "
                         "or .csv file, or - for JSON on stdin")
    spec = _only(path, specs)
    if len(spec.shape) not in (2, 3) or -1 in spec.shape:
        raise InputError(f"{path}: this model's input '{spec.name}' is {list(spec.shape)}, not an image; "
                         "give a .npy, .npz, .csv file or JSON")
    return read_image(path, spec.shape, invert=invert)


def _only(where: Path | str, specs: tuple[InputSpec, ...]) -> InputSpec:
    if len(specs) != 1:
        names = [s.name for s in specs]
        raise InputError(f"{where}: this model takes {len(specs)} inputs {names}; give an .npz with one array per "
                         "input name, or a JSON object on stdin")
    return specs[0]


def _one_input(where: Path | str, specs: tuple[InputSpec, ...], arr: np.ndarray) -> np.ndarray:
    _only(where, specs)
    return arr


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such .npy file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read this .npy file ({exc})") from None


def _from_npz(path: Path, specs: tuple[InputSpec, ...]) -> np.ndarray | dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such .npz file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read this .npz file ({exc})") from None
    names = [s.name for s in specs]
    if len(specs) == 1:
        for key in (names[0], "x"):
            if key in arrays:
                return arrays[key]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise InputError(f"{path}: holds {sorted(arrays)}; name the array '{names[0]}' (the model's input) or 'x'")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{path}: has no array for input(s) {missing}; it holds {sorted(arrays)}")
    return {n: arrays[n] for n in names}


def read_csv(path: Path | str, text: str | None = None) -> np.ndarray:
    """A CSV of numbers -> ``(rows, columns)`` float32; a first row that is not all numbers is a header."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: no such .csv file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read this .csv file ({exc})") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    values: list[list[float]] = []
    for line, row in enumerate(rows, start=1):
        try:
            values.append([float(cell) for cell in row])
        except ValueError:
            if line == 1:
                continue  # a header
            raise InputError(f"{path}: row {line} holds a value that is not a number: {row}") from None
    if not values:
        raise InputError(f"{path}: no rows of numbers")
    widths = {len(v) for v in values}
    if len(widths) > 1:
        raise InputError(f"{path}: rows have different numbers of columns ({sorted(widths)})")
    return np.asarray(values, dtype=np.float32)


def _array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise InputError(f"{where}: not a rectangular array of numbers ({exc})") from None
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{where}: expected numbers, got {arr.dtype} values")
    return arr


def _from_json(stream: IO[str], specs: tuple[InputSpec, ...]) -> np.ndarray | dict[str, np.ndarray]:
    try:
        data = json.load(stream)
    except json.JSONDecodeError as exc:
        raise InputError(f"stdin: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, Mapping):
        if len(specs) == 1 and specs[0].name not in data and len(data) != 1:
            raise InputError(f"stdin: a JSON object must name the input '{specs[0].name}'; it has {sorted(data)}")
        if len(specs) == 1:
            value = data.get(specs[0].name, next(iter(data.values())) if len(data) == 1 else None)
            return _array(value, f"stdin '{specs[0].name}'")
        return {str(k): _array(v, f"stdin '{k}'") for k, v in data.items()}
    _only("stdin", specs)
    return _array(data, "stdin")
