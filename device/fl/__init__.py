"""Federated learning on the device: training inside the .tflite (LiteRT), the Flower SuperNode/ClientApp and its zygote."""
