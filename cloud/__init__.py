"""edgeloop's cloud side: data, training, export to verified TFLite bundles.

TensorFlow is imported by the modules that need it (``cloud.train.training``, ``cloud.export.exporter``),
not by this package, so ``import cloud`` stays cheap.
"""
