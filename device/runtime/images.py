"""Read image and .npy files into raw arrays a :class:`~device.Runtime` takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.errors import ImageReadError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image(path: str | Path, shape: tuple[int, ...], invert: bool = False) -> np.ndarray:
    """Decode an image into uint8 of ``shape`` (H, W[, C]): greyscale for C=1, RGB for C=3.

    The image is resized to H×W if needed. ``invert`` turns dark-on-light (a photo of a
    digit on paper) into light-on-dark (the MNIST convention).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    channels = shape[2] if len(shape) == 3 else 1
    if channels not in (1, 3):
        raise InputError(f"{path}: cannot make a {channels}-channel input from an image file")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            height, width = shape[0], shape[1]
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read this image ({exc})") from None
    if invert:
        arr = 255 - arr
    return arr.reshape(shape)


def read_input(path: str | Path, shape: tuple[int, ...], invert: bool = False) -> np.ndarray:
    """Read one input file: an image, or a .npy array (one sample or a batch)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{path}: no such .npy file") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read this .npy file ({exc})") from None
        return (255 - arr) if invert and arr.dtype == np.uint8 else arr
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unknown input type; give an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy file")
    return read_image(path, shape, invert=invert)
