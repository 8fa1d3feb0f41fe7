"""Training: data loaders (MNIST-5k, digits, .npz, image folders) and the Keras training loop with checkpoints."""
