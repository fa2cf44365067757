"""deeplab_jax: DeepLabV3+ / MobileNetV2 semantic segmentation in JAX."""

__version__ = '0.1.0'
