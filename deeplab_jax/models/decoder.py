"""Decoders by name (`config.model.decoder.type`): `DECODERS[name]`.

* 'deeplabv3plus': the DeepLabV3+ decoder (reference `refine_by_decoder`).
* 'upsample': the seed's "simple upsampling", no module: the model applies
  the classifier to the head's output and resizes the logits to the input
  size (see `deeplab.DeepLab`).

Adding a decoder: a module with an nnx.Module that has `out_channels`,
`tf_scopes()` and `__call__(encoder_out, low_level)`, and a
`from_config(decoder_config, encoder_channels, low_level_channels, *,
options, rngs)`; one line in `DECODERS`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deeplab_jax.models.heads import separable_tf_scopes
from deeplab_jax.models.layers import ConvBN, LayerOptions, SeparableConvBN
from deeplab_jax.ops.resize import resize_bilinear
from deeplab_jax.registry import Registry

Array = jax.Array


class DeepLabV3PlusDecoder(nnx.Module):
  """Fuses the encoder output with the stride-4 backbone features.

  low-level features -> 1x1 conv to `low_level_channels` (48); encoder output
  resized (align corners) to their size; concat [encoder, low-level]; two
  separable 3x3 convs with `channels` (256) outputs.
  """

  def __init__(self, encoder_channels: int, low_level_in_channels: int, *,
               low_level_channels: int = 48, channels: int = 256,
               options: LayerOptions = LayerOptions(), rngs: nnx.Rngs):
    self.feature_projection = ConvBN(low_level_in_channels, low_level_channels,
                                     1, options=options, rngs=rngs)
    self.decoder_conv0 = SeparableConvBN(encoder_channels + low_level_channels,
                                         channels, options=options, rngs=rngs)
    self.decoder_conv1 = SeparableConvBN(channels, channels, options=options,
                                         rngs=rngs)
    self.out_channels = channels

  @classmethod
  def from_config(cls, decoder_config: Any, encoder_channels: int,
                  low_level_channels: int, *, options: LayerOptions,
                  rngs: nnx.Rngs) -> 'DeepLabV3PlusDecoder':
    return cls(encoder_channels, low_level_channels,
               low_level_channels=decoder_config.low_level_channels,
               channels=decoder_config.channels, options=options, rngs=rngs)

  def tf_scopes(self) -> dict[str, ConvBN]:
    """`decoder/feature_projection0`, `decoder/decoder_conv<j>_{depthwise,
    pointwise}`: the reference's names."""
    scopes = {'decoder/feature_projection0': self.feature_projection}
    scopes.update(separable_tf_scopes('decoder/decoder_conv0',
                                      self.decoder_conv0))
    scopes.update(separable_tf_scopes('decoder/decoder_conv1',
                                      self.decoder_conv1))
    return scopes

  def __call__(self, encoder_out: Array, low_level: Array) -> Array:
    """[N, h, w, C] encoder output + [N, H/4, W/4, C_low] -> [N, H/4, W/4, 256]."""
    low = self.feature_projection(low_level)
    encoder_out = resize_bilinear(encoder_out, low.shape[1:3])
    x = jnp.concatenate([encoder_out, low], axis=-1)
    return self.decoder_conv1(self.decoder_conv0(x))


def no_decoder(*args, **kwargs) -> None:
  """'upsample': no decoder module (the logits are upsampled)."""
  del args, kwargs


DECODERS = Registry('decoder', 'config.model.decoder.type', {
    'deeplabv3plus': DeepLabV3PlusDecoder.from_config,
    'upsample': no_decoder,
})
