"""Keras `keras.applications` ImageNet weights -> our backbones.

MobileNetV2: Conv1 + bn_Conv1 (stem); block 0 is `expanded_conv_*` (no
expand); blocks 1..16 are `block_<i>_{expand,depthwise,project}` each with a
`_BN`. Keras rounds every width to a multiple of 8, so the backbone must be
built with channel_rounding='keras' (identical to 'deeplab' at alpha 1.0).

ResNet50/101: conv1_conv + conv1_bn (stem), `conv<s>_block<u>_<i>_{conv,bn}`
with i = 0 the shortcut and 1..3 the bottleneck convs; the backbone must be
built with layout='keras' (strides in the first unit, conv biases). Keras's
ResNet takes BGR: the stem kernel's input channels are reversed so that ours
takes RGB.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from flax import nnx

from deeplab_jax.errors import MissingDependencyError, WeightImportError
from deeplab_jax.models.jax_compat import abstract
from deeplab_jax.models.layers import ConvBN, LayerOptions
from deeplab_jax.models.backbones.mobilenet_v2 import MobileNetV2
from deeplab_jax.models.backbones.resnet import ResNetV1
from deeplab_jax.weights.common import assign, check_filled, set_batch_norm
from deeplab_jax.weights.tree import module_weights


def _keras_weights(keras_model: Any) -> dict[str, np.ndarray]:
  """{'layer/variable': array} for every weight of a Keras model."""
  out = {}
  for layer in keras_model.layers:
    for w in layer.weights:
      out[f'{layer.name}/{w.name.split("/")[-1].split(":")[0]}'] = np.asarray(
          w.numpy())
  return out


def _load_conv_bn(target: ConvBN, weights: dict[str, np.ndarray], conv: str,
                  bn: str, depthwise: bool = False,
                  reverse_input_channels: bool = False) -> None:
  key = f'{conv}/kernel'
  if depthwise and key not in weights:  # Keras 2 name.
    key = f'{conv}/depthwise_kernel'
  if key not in weights:
    raise WeightImportError(f'The Keras model has no weight {key!r}.')
  kernel = weights[key]
  if depthwise:  # Keras [kh, kw, C, multiplier] -> grouped HWIO [kh, kw, 1, C*m]
    kh, kw, c, m = kernel.shape
    kernel = kernel.reshape(kh, kw, 1, c * m)
  if reverse_input_channels:  # BGR -> RGB input.
    kernel = kernel[:, :, ::-1, :]
  assign(target.conv.kernel, kernel, key)
  if target.conv.bias is not None:
    assign(target.conv.bias, weights[f'{conv}/bias'], f'{conv}/bias')
  set_batch_norm(
      target.bn, bn, gamma=weights.get(f'{bn}/gamma'),
      beta=weights[f'{bn}/beta'], mean=weights[f'{bn}/moving_mean'],
      var=weights[f'{bn}/moving_variance'])


def load_keras_mobilenet_v2(backbone: MobileNetV2, keras_model: Any) -> None:
  """Copies a Keras MobileNetV2's weights (and BN statistics) in place."""
  weights = _keras_weights(keras_model)
  _load_conv_bn(backbone.stem, weights, 'Conv1', 'bn_Conv1')
  for i, block in enumerate(backbone.blocks):
    prefix = 'expanded_conv_' if i == 0 else f'block_{i}_'
    if block.expand is not None:
      _load_conv_bn(block.expand, weights, prefix + 'expand',
                    prefix + 'expand_BN')
    _load_conv_bn(block.depthwise, weights, prefix + 'depthwise',
                  prefix + 'depthwise_BN', depthwise=True)
    _load_conv_bn(block.project, weights, prefix + 'project',
                  prefix + 'project_BN')


def _keras():
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  try:
    import keras  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'ImageNet initialisation needs Keras 3: pip install keras') from e
  return keras


def _with_weights(model: Any, weights: str | None) -> Any:
  if weights not in (None, 'imagenet'):
    if not os.path.exists(weights):
      raise WeightImportError(f'Keras weights file {weights!r} does not exist.')
    model.load_weights(weights, skip_mismatch=False)
  return model


def keras_mobilenet_v2(alpha: float, weights: str | None = 'imagenet',
                       input_size: int = 224) -> Any:
  """A Keras MobileNetV2 without its top (KERAS_BACKEND=jax, no TensorFlow).

  weights='imagenet' downloads Keras's published ImageNet weights (online);
  a path loads a local `.weights.h5` / `.h5` file; None keeps random weights.
  """
  keras = _keras()
  return _with_weights(keras.applications.MobileNetV2(
      input_shape=(input_size, input_size, 3), alpha=alpha,
      include_top=False,
      weights='imagenet' if weights == 'imagenet' else None), weights)


def keras_resnet(depth: int, weights: str | None = 'imagenet',
                 input_size: int = 224) -> Any:
  """keras.applications.ResNet50 / ResNet101 without its top; `weights` as
  in `keras_mobilenet_v2`."""
  keras = _keras()
  constructor = {50: keras.applications.ResNet50,
                 101: keras.applications.ResNet101}[depth]
  return _with_weights(constructor(
      input_shape=(input_size, input_size, 3), include_top=False,
      weights='imagenet' if weights == 'imagenet' else None), weights)


def _check_keras_resnet_layout(layout: str, stem: str) -> None:
  if layout != 'keras' or stem != '7x7':
    raise WeightImportError(
        "Keras's ResNet subsamples in a block's first unit and has conv "
        "biases: set config.model.backbone.layout='keras' (and stem='7x7') "
        'to load its weights.')


def load_keras_resnet(backbone: ResNetV1, keras_model: Any) -> None:
  """Copies a Keras ResNet's weights (and BN statistics) in place into a
  ResNetV1 built with layout='keras' and the 7x7 stem."""
  _check_keras_resnet_layout(backbone.layout, backbone.stem_type)
  weights = _keras_weights(keras_model)
  _load_conv_bn(backbone.stem[0], weights, 'conv1_conv', 'conv1_bn',
                reverse_input_channels=True)
  for b, block in enumerate(backbone.blocks):
    for u, unit in enumerate(block, 1):
      prefix = f'conv{b + 2}_block{u}_'
      if unit.shortcut is not None:
        _load_conv_bn(unit.shortcut, weights, prefix + '0_conv',
                      prefix + '0_bn')
      for i, conv in enumerate((unit.conv1, unit.conv2, unit.conv3), 1):
        _load_conv_bn(conv, weights, f'{prefix}{i}_conv', f'{prefix}{i}_bn')


KERAS_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def imagenet_backbone_weights(model_config: Any, weights: str = 'imagenet'
                              ) -> dict[tuple[str, ...], np.ndarray]:
  """Keras's ImageNet backbone as {('params'|'batch_stats', 'backbone',
  ...): array}, for `config.train.init_from='keras_imagenet'`.

  Args:
    model_config: config.model. MobileNetV2: its depth multiplier picks the
      Keras alpha, its channel rounding must be Keras's. ResNetV1: its depth
      picks ResNet50/101, its layout must be Keras's.
    weights: 'imagenet' (Keras downloads them) or a local Keras weights file.
  """
  name = model_config.backbone.name
  if name == ResNetV1.name:
    b = model_config.backbone
    _check_keras_resnet_layout(b.layout, b.stem)
    backbone = abstract(lambda: ResNetV1(
        depth=b.depth, stem=b.stem, layout=b.layout, output_stride=32,
        rngs=nnx.Rngs(0)))
    load_keras_resnet(backbone, keras_resnet(b.depth, weights=weights))
    return _filled_weights(backbone, weights)
  if name != MobileNetV2.name:
    raise WeightImportError(
        f"Keras publishes no ImageNet weights for backbone {name!r}: "
        "'keras_imagenet' takes mobilenet_v2 or resnet_v1 (the zoo's ImageNet "
        'checkpoints are in deeplab_jax/weights/pretrained.py).')
  alpha = float(model_config.backbone.depth_multiplier)
  if weights == 'imagenet' and alpha not in KERAS_IMAGENET_ALPHAS:
    raise WeightImportError(
        f'Keras publishes ImageNet MobileNetV2 weights for alpha in '
        f'{KERAS_IMAGENET_ALPHAS}, not {alpha}: set '
        'config.model.backbone.depth_multiplier to one of them.')
  if alpha != 1.0 and model_config.backbone.channel_rounding != 'keras':
    raise WeightImportError(
        f'Keras rounds MobileNetV2 widths to multiples of 8 at alpha {alpha}; '
        "set config.model.backbone.channel_rounding='keras' to load them.")
  keras_model = keras_mobilenet_v2(alpha, weights=weights)
  backbone = abstract(lambda: MobileNetV2(
      depth_multiplier=alpha, channel_rounding='keras', output_stride=32,
      options=LayerOptions(), rngs=nnx.Rngs(0)))
  load_keras_mobilenet_v2(backbone, keras_model)
  return _filled_weights(backbone, weights)


def _filled_weights(backbone: nnx.Module, weights: str | None
                    ) -> dict[tuple[str, ...], np.ndarray]:
  """The backbone's arrays, which the Keras model must have filled: it is
  built with nnx.eval_shape (shapes only: initialising ResNet-101's 42M
  random weights first would be wasted)."""
  check_filled(backbone, f'Keras weights {weights!r}')
  return module_weights(backbone, prefix=('backbone',))
