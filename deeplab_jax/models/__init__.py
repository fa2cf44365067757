"""DeepLabV3+ with a MobileNetV2 backbone in Flax NNX (NHWC)."""

from deeplab_jax.models.deeplab import (DeepLab, create_model,
                                        fold_batch_norm, inference_view,
                                        with_output_stride)
from deeplab_jax.models.summary import format_summary, parameter_counts

__all__ = [
    'DeepLab', 'create_model', 'fold_batch_norm', 'format_summary',
    'inference_view',
    'parameter_counts', 'with_output_stride'
]
