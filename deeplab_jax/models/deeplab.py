"""The assembled DeepLab model and its construction from `config.model`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deeplab_jax.models.backbones import Backbone, get_backbone
from deeplab_jax.models.decoder import DECODERS
from deeplab_jax.models.heads import HEADS
from deeplab_jax.models.jax_compat import with_quick_sharding_probe
from deeplab_jax.models.layers import ConvBN, LayerOptions
from deeplab_jax.ops.dense import dense_conv_general_dilated
from deeplab_jax.ops.resize import resize_bilinear

Array = jax.Array

# The reference's scope of the classifier.
LOGITS_TF_SCOPE = 'logits/semantic'

DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}


class DeepLab(nnx.Module):
  """backbone -> head (ASPP or DPC) -> [DeepLabV3+ decoder] -> classifier.

  The classifier (`logits`, reference scope `logits/semantic`) is a conv with
  bias and no BatchNorm; its output is resized to the input size with
  align-corners bilinear interpolation, as the reference does before the loss
  and the argmax.
  """

  def __init__(self, backbone: Backbone, head: nnx.Module,
               decoder: nnx.Module | None, *, num_classes: int,
               classifier_kernel_size: int = 1,
               classifier_use_bias: bool = True, dtype: Any = None,
               rngs: nnx.Rngs):
    self.backbone = backbone
    self.head = head
    self.decoder = decoder
    in_features = decoder.out_channels if decoder else head.out_channels
    self.logits = nnx.Conv(
        in_features, num_classes,
        (classifier_kernel_size, classifier_kernel_size), padding='SAME',
        use_bias=classifier_use_bias, dtype=dtype,
        kernel_init=nnx.initializers.truncated_normal(0.01),
        conv_general_dilated=dense_conv_general_dilated, rngs=rngs)
    self.num_classes = num_classes

  @property
  def uses_image_features(self) -> bool:
    """Whether the head pools the whole image (ASPP's image pooling): what
    a tile of a larger image sees differs from the image's own, unless
    given as `image_features`."""
    return getattr(self.head, 'image_pooling', None) is not None

  def __call__(self, images: Array, *, rngs: nnx.Rngs | None = None,
               upsample: bool = True,
               image_features: Array | None = None) -> Array:
    """Per-pixel class logits.

    Args:
      images: [N, H, W, 3] float32 RGB, normalised as the backbone's
        `preprocessing` says (MobileNetV2: pixel / 127.5 - 1, in [-1, 1]).
      rngs: dropout randomness (needed only in training mode).
      upsample: resize the logits to [H, W]; False returns them at the
        decoder's stride (4) or the output stride.
      image_features: [N, 1, 1, C] mean backbone features that image
        pooling uses instead of these images' own (`uses_image_features`).

    Returns:
      float32 logits (not probabilities), [N, H, W, num_classes].
    """
    endpoints = self.backbone(images)
    if image_features is not None and self.uses_image_features:
      x = self.head(endpoints['features'], rngs=rngs,
                    image_features=image_features)
    else:
      x = self.head(endpoints['features'], rngs=rngs)
    if self.decoder is not None:
      x = self.decoder(x, endpoints['low_level'])
    logits = self.logits(x).astype(jnp.float32)
    # The reference resizes each scale's logits to the logits' size (an
    # identity at one scale: skipped, but for TFLite, whose official files
    # have it).
    logits = resize_bilinear(logits, logits.shape[1:3])
    if upsample:
      logits = resize_bilinear(logits, images.shape[1:3])
    return logits

  def tf_scopes(self) -> dict[str, nnx.Module]:
    """{reference TF scope: our ConvBN (or the classifier's nnx.Conv)} for
    every convolution, which the TFLite and TF-checkpoint importers read."""
    scopes = dict(self.backbone.tf_scopes())
    scopes.update(self.head.tf_scopes())
    if self.decoder is not None:
      scopes.update(self.decoder.tf_scopes())
    scopes[LOGITS_TF_SCOPE] = self.logits
    return scopes


@with_quick_sharding_probe  # Traced whole by nnx.eval_shape: see jax_compat.
def create_model(model_config: Any, *, output_stride: int | None = None,
                 rngs: nnx.Rngs | None = None) -> DeepLab:
  """Builds the model `config.model` describes.

  Args:
    model_config: `config.model` (validated by `validate_model_config`).
    output_stride: overrides `model_config.output_stride` (e.g. the eval
      stride); parameters do not depend on it.
    rngs: initialisation randomness; default nnx.Rngs(0).

  Returns:
    The model in training mode (BatchNorm on batch statistics, dropout on).
  """
  m = model_config
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  output_stride = output_stride or m.output_stride
  dtype = DTYPES[m.dtype]
  options = LayerOptions(
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
      bn_scale=m.bn_scale, dtype=dtype, depthwise_impl=m.depthwise_impl)
  backbone = get_backbone(m.backbone.name).from_config(
      m.backbone, output_stride=output_stride, dtype=dtype,
      depthwise_impl=m.depthwise_impl, rngs=rngs)
  head = HEADS.lookup(m.head.type)(
      m.head, backbone.out_channels, output_stride=output_stride,
      options=options, rngs=rngs)
  decoder = DECODERS.lookup(m.decoder.type)(
      m.decoder, head.out_channels, backbone.low_level_channels,
      options=options, rngs=rngs)
  return DeepLab(backbone, head, decoder, num_classes=m.num_classes,
                 classifier_kernel_size=m.classifier_kernel_size,
                 classifier_use_bias=m.classifier_use_bias, dtype=dtype,
                 rngs=rngs)


def inference_view(model: nnx.Module) -> nnx.Module:
  """The same model (shared arrays) with moving BN statistics, no dropout."""
  # A registered head or decoder may have no dropout (or no BatchNorm).
  return nnx.view(model, deterministic=True, use_running_average=True,
                  raise_if_not_found=False)


def fold_batch_norm(model: nnx.Module) -> nnx.Module:
  """An inference copy of `model` with every BatchNorm folded into its
  convolution (kernel scaled, bias added; see `ConvBN.fold_batch_norm`).

  Same outputs as `inference_view(model)` up to float rounding (a test
  pins 1e-5); the original is untouched. Traceable, so that a jitted
  inference function can fold the weights it is given.
  """
  folded = nnx.clone(inference_view(model))
  for _, module in nnx.iter_graph(folded):
    if isinstance(module, ConvBN):
      module.fold_batch_norm()
  return folded


def with_output_stride(model: DeepLab, model_config: Any,
                       output_stride: int) -> DeepLab:
  """The same weights in a model built for another output stride.

  Strides and dilation rates are part of the model's structure, not of its
  parameters, so evaluating at OS 8 a model trained at OS 16 means building
  the OS-8 structure (abstractly, without initialising) and filling it with
  the trained state.
  """
  abstract = nnx.eval_shape(
      lambda: create_model(model_config, output_stride=output_stride))
  graphdef, _ = nnx.split(abstract)
  return nnx.merge(graphdef, nnx.state(model))
