"""Weight import: Keras ImageNet MobileNetV2, official DeepLab TFLite files
and TF checkpoints, into the Flax model."""
