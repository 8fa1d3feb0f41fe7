"""Federated learning: the FedAvg family on plain numpy arrays.

The aggregation core imports numpy only; TensorFlow lives where client training happens.
"""
