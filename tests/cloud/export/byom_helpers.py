"""Tiny synthetic data sets and Keras models for the bring-your-own-model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Two colours of (almost) the same luminance: a pipeline that turns images grey sees noise only.
COLOURS = {"blue": (40, 100, 160), "red": (200, 40, 40)}


def colour_folder(root: Path, per_class: int = 30, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, colour in COLOURS.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 18, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
    return root


def blob_csv(path: Path, n: int = 150, features: int = 5, seed: int = 0) -> Path:
    """Three well-separated Gaussian blobs, named classes in a 'kind' column in the middle."""
    rng = np.random.default_rng(seed)
    names = ("alpha", "beta", "gamma")
    y = np.arange(n) % 3
    x = rng.normal(size=(n, features)) * 0.7 + 10.0 + 3.0 * np.eye(3, features)[y] * 2.0
    lines = [",".join([f"f{i}" for i in range(2)] + ["kind"] + [f"f{i}" for i in range(2, features)])]
    for row, label in zip(x, y):
        values = [f"{v:.4f}" for v in row]
        lines.append(",".join(values[:2] + [names[label]] + values[2:]))
    path.write_text("\n".join(lines) + "\n")
    return path


def sine_npz(path: Path, n: int = 120, steps: int = 32, channels: int = 2, seed: int = 0) -> Path:
    """Sequences (N, T, C): class k is a sine of frequency k + 1, random phase, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    t = np.arange(steps)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t / steps + phase) + rng.normal(0, 0.1, (n, steps, channels))
    np.savez(path, x=x.astype(np.float32), y=y, labels=np.array(["slow", "medium", "fast"]))
    return path


def rescaling_softmax_model(folder: Path, epochs: int = 8, seed: int = 0):
    """A model that brings its own preprocessing (Rescaling 1/255) and ends in a softmax, fitted on ``folder``."""
    import keras

    from cloud.train.data import load_image_folder

    ds = load_image_folder(folder)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(ds.sample_shape),
        keras.layers.Rescaling(1.0 / 255, name="rescale"),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(len(ds.labels), activation="softmax", name="probs"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(ds.x.astype(np.float32), ds.y, epochs=epochs, batch_size=16, verbose=0)
    return model, ds
