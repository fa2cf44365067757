"""Backend kernels and their gradients, under the model's layers (NHWC).

The model files (deeplab_jax/models/) say what is computed; this package
says how, per backend, each path chosen at trace time (`dispatch`):

* `depthwise`: depthwise convs as shifted sums with their own VJP on XLA:CPU
  and on GPUs in float32; the shifted forward with cuDNN's gradients on
  GPUs in bfloat16; the native grouped conv elsewhere.
* `dense`: 1x1 convs as one product, kxk convs with one GEMM per tap for
  their kernel gradient, on XLA:CPU (its own kernel gradients are
  whole-map convolutions); the native conv elsewhere.
* `pooling`: max pool whose XLA:CPU gradient is pads and sums; global
  average pooling.
* `resize`: align-corners bilinear resizing (the reference's), a two-tap
  blend per axis with the interpolation matrix's transpose as gradient.
* `padding`: TF 'SAME', the reference's fixed padding, per-tap slices.

Inside `native_ops()` (exports) every op traces to plain XLA ops; inside
`tflite_ops()` resizes and global means trace to what becomes TFLite's own
RESIZE_BILINEAR and AVERAGE_POOL_2D.
"""

from deeplab_jax.ops.dense import (dense_conv, dense_conv_general_dilated,
                                   pointwise_dot)
from deeplab_jax.ops.depthwise import (CONV_IMPLEMENTATIONS, depthwise_conv,
                                       shifted_depthwise_conv,
                                       shifted_forward_depthwise_conv)
from deeplab_jax.ops.dispatch import (native_ops, native_ops_active,
                                      tflite_ops, tflite_ops_active)
from deeplab_jax.ops.padding import fixed_padding, tf_same_padding
from deeplab_jax.ops.pooling import global_average_pool, max_pool
from deeplab_jax.ops.resize import (interpolation_taps, resize_bilinear,
                                    resize_bilinear_p, scale_dimension)

__all__ = [
    'CONV_IMPLEMENTATIONS', 'dense_conv', 'dense_conv_general_dilated',
    'depthwise_conv', 'fixed_padding', 'global_average_pool',
    'interpolation_taps', 'max_pool', 'native_ops', 'native_ops_active',
    'pointwise_dot', 'resize_bilinear', 'resize_bilinear_p',
    'scale_dimension', 'shifted_depthwise_conv',
    'shifted_forward_depthwise_conv', 'tf_same_padding', 'tflite_ops',
    'tflite_ops_active'
]
