"""Export: Keras to TFLite conversion, quantization, verification against Keras, trainable export, reports."""
