"""The model zoo: Keras builders by name (``models.registry``) and shipped bundles (``models.bundles``).

Importing this package is cheap; Keras loads only when a builder is used.
"""
