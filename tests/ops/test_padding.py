"""TF 'SAME' padding."""

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from deeplab_jax.models.layers import ConvBN
from deeplab_jax.ops import padding


def test_tf_same_padding_is_asymmetric_for_even_inputs():
  # TF pads 0 before and 1 after for a stride-2 3x3 conv on an even size;
  # PyTorch's padding=1 pads 1 on both sides and samples other pixels.
  assert padding.tf_same_padding(8, 3, 2) == (0, 1)
  assert padding.tf_same_padding(9, 3, 2) == (1, 1)
  assert padding.tf_same_padding(33, 3, 1, rate=4) == (4, 4)
  conv = ConvBN(1, 1, 3, strides=2, activation=None, rngs=nnx.Rngs(0))
  conv.conv.kernel[...] = jnp.ones((3, 3, 1, 1))
  x = jnp.arange(64.0).reshape(1, 8, 8, 1)
  out = nnx.view(conv, use_running_average=True)(x)[0, :, :, 0]
  eps = conv.bn.epsilon
  tf_style = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (2, 2),
                                      ((0, 1), (0, 1)),
                                      dimension_numbers=('NHWC', 'HWIO',
                                                         'NHWC'))[0, :, :, 0]
  torch_style = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (2, 2),
                                         ((1, 1), (1, 1)),
                                         dimension_numbers=('NHWC', 'HWIO',
                                                            'NHWC'))[0, :, :,
                                                                     0]
  np.testing.assert_allclose(out * np.sqrt(1 + eps), tf_style, rtol=1e-6)
  assert not np.allclose(out * np.sqrt(1 + eps), torch_style)
