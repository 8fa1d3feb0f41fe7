"""The inference runtime: the bundle format, interpreter choice, preprocessing, images, latency and ``Runtime``."""
