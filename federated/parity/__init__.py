"""Parity with TensorFlow Federated: the same FedAvg run in TFF 0.87 and in edgeloop, weight for weight.

TFF pins TensorFlow 2.14, so it runs in its own ``.venv-tff`` (``requirements-tff.lock``) as a
separate process (``tff_fedavg.py``); the two sides talk only through an ``.npz`` exchange file.
Nothing here is imported by ``federated``'s core.
"""
