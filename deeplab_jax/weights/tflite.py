"""Official DeepLab TFLite exports -> the Flax model.

The exports have BatchNorm folded into the convolutions (each conv has a
bias and no BN tensors), so every BatchNorm is set to the identity with the
folded bias as its offset (scale 1, mean 0, variance 1 - eps). uint8 models
are dequantised (per tensor or per channel). Weights are found by walking the
graph's convolution ops and reading their weight tensors' TF scopes, so the
fused, semicolon-joined names of quantised exports work as well.

The LiteRT interpreter (`pip install ai-edge-litert`) reads the flatbuffer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from deeplab_jax.errors import MissingDependencyError, WeightImportError
from deeplab_jax.models.deeplab import DeepLab
from deeplab_jax.models.layers import ConvBN
from deeplab_jax.models.backbones.mobilenet_v2 import mobilenet_v2_layout
from deeplab_jax.weights.common import assign, check_scopes, set_batch_norm

_WEIGHT_NAME = re.compile(r'^(.+?)/(?:depthwise_)?weights(?:_quant)?(?:/|$)')
DEPTH_MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


@dataclasses.dataclass
class TFLiteWeights:
  """What an exported DeepLab holds, in our layouts (float32, HWIO)."""
  path: str
  layers: dict[str, tuple[np.ndarray, np.ndarray | None]]
  input_size: tuple[int, int]
  depth_multiplier: float
  output_stride: int
  quantized: bool


def interpreter(path: str | os.PathLike):
  """A LiteRT interpreter that keeps every op (no delegate fusion)."""
  try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        'Reading .tflite files needs the LiteRT interpreter, which the '
        'install includes: pip install ai-edge-litert') from e
  if not os.path.exists(path):
    raise WeightImportError(f'{path} does not exist.')
  try:
    result = litert.Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=(
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        experimental_preserve_all_tensors=True)
    result.allocate_tensors()
  except (ValueError, RuntimeError) as e:
    raise WeightImportError(f'{path} is not a readable TFLite model ({e}).'
                            ) from e
  return result


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
  params = detail.get('quantization_parameters') or {}
  scales = np.asarray(params.get('scales', []), np.float64)
  if value.dtype in (np.float32, np.float64) or scales.size == 0:
    return np.asarray(value, np.float32)
  zero_points = np.asarray(params.get('zero_points', [0]), np.float64)
  axis = params.get('quantized_dimension', 0)
  if scales.size > 1:  # Per channel along `axis`.
    shape = [1] * value.ndim
    shape[axis] = -1
    scales = scales.reshape(shape)
    zero_points = zero_points.reshape(shape)
  return ((value.astype(np.float64) - zero_points) * scales).astype(np.float32)


def _scope(name: str) -> str | None:
  for part in name.split(';'):
    match = _WEIGHT_NAME.match(part)
    if match:
      return match.group(1)
  return None


def _infer_depth_multiplier(layers) -> float:
  stem = layers['MobilenetV2/Conv'][0].shape[-1]
  for dm in DEPTH_MULTIPLIERS:
    stem_width, _, blocks = mobilenet_v2_layout(dm, 'deeplab')
    if stem_width != stem:
      continue
    if all(
        layers.get(f'MobilenetV2/expanded_conv{f"_{i}" if i else ""}/project',
                   (np.zeros((0,)),))[0].shape[-1:] == (b.out_channels,)
        for i, b in enumerate(blocks)):
      return dm
  raise WeightImportError(
      f'The MobileNetV2 widths in the file (first conv: {stem} channels) '
      f'match no depth multiplier in {DEPTH_MULTIPLIERS} with DeepLab '
      'rounding.')


def read_tflite(path: str | os.PathLike) -> TFLiteWeights:
  """The convolution weights of a DeepLab TFLite export, by TF scope."""
  interp = interpreter(path)
  details = {d['index']: d for d in interp.get_tensor_details()}
  layers: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
  outputs: dict[str, tuple[int, ...]] = {}
  quantized = False
  for op in interp._get_ops_details():  # pylint: disable=protected-access
    if op['op_name'] not in ('CONV_2D', 'DEPTHWISE_CONV_2D'):
      continue
    weight_index = int(op['inputs'][1])
    scope = _scope(details[weight_index]['name'])
    if scope is None:
      raise WeightImportError(
          f'{path}: cannot tell which layer the weights '
          f'{details[weight_index]["name"]!r} belong to.')
    raw = interp.get_tensor(weight_index)
    quantized |= raw.dtype == np.uint8 or raw.dtype == np.int8
    kernel = _dequantize(raw, details[weight_index])
    if op['op_name'] == 'CONV_2D':  # [O, kh, kw, I] -> HWIO
      kernel = np.transpose(kernel, (1, 2, 3, 0))
    else:  # [1, kh, kw, C] -> [kh, kw, 1, C]
      kernel = np.transpose(kernel, (1, 2, 0, 3))
    bias = None
    if len(op['inputs']) > 2 and op['inputs'][2] >= 0:
      bias_index = int(op['inputs'][2])
      bias = _dequantize(interp.get_tensor(bias_index), details[bias_index])
    layers[scope] = (kernel, bias)
    outputs[scope] = tuple(details[int(op['outputs'][0])]['shape'])
  if 'MobilenetV2/Conv' not in layers:
    raise WeightImportError(f'{path} is not a DeepLab MobileNetV2 export '
                            '(no MobilenetV2/Conv layer).')
  input_shape = tuple(interp.get_input_details()[0]['shape'])
  features = outputs.get('MobilenetV2/expanded_conv_16/project')
  if features is None:
    raise WeightImportError(f'{path} has no MobilenetV2/expanded_conv_16.')
  ratio = (input_shape[1] - 1) / max(features[1] - 1, 1)
  output_stride = min((8, 16, 32), key=lambda s: abs(s - ratio))
  return TFLiteWeights(
      path=str(path), layers=layers,
      input_size=(int(input_shape[1]), int(input_shape[2])),
      depth_multiplier=_infer_depth_multiplier(layers),
      output_stride=output_stride, quantized=quantized)


def check_config(weights: TFLiteWeights, model_config: Any,
                 eval_output_stride: int | None = None) -> None:
  """WeightImportError when the config disagrees with the file."""
  problems = []
  backbone = model_config.backbone
  if float(backbone.depth_multiplier) != weights.depth_multiplier:
    problems.append(
        f'depth multiplier {weights.depth_multiplier} (config.model.backbone.'
        f'depth_multiplier = {backbone.depth_multiplier})')
  if (backbone.channel_rounding != 'deeplab' and
      weights.depth_multiplier != 1.0):
    problems.append("DeepLab channel rounding (config.model.backbone."
                    f"channel_rounding = {backbone.channel_rounding!r})")
  if eval_output_stride is not None and (
      eval_output_stride != weights.output_stride):
    problems.append(f'output stride {weights.output_stride} '
                    f'(config.eval.output_stride = {eval_output_stride})')
  if problems:
    raise WeightImportError(
        f'{weights.path} was exported with {", ".join(problems)}. Use '
        'configs/voc_pretrained.py, or set those config values.')


def load_into(model: DeepLab, weights: TFLiteWeights) -> None:
  """Copies the folded weights into `model` in place."""
  scopes = model.tf_scopes()
  check_scopes(scopes, weights.layers, weights.path)
  for scope, target in scopes.items():
    kernel, bias = weights.layers[scope]
    if isinstance(target, ConvBN):
      assign(target.conv.kernel, kernel, f'{scope}/weights')
      channels = kernel.shape[-1]
      if bias is None:
        bias = np.zeros((channels,), np.float32)
      epsilon = target.bn.epsilon
      set_batch_norm(
          target.bn, scope,
          gamma=np.ones(channels, np.float32)
          if target.bn.scale is not None else None,
          beta=bias, mean=np.zeros(channels, np.float32),
          var=np.full(channels, 1.0 - epsilon, np.float32))
    else:  # The classifier: a conv with a bias.
      assign(target.kernel, kernel, f'{scope}/weights')
      if target.bias is not None:
        assign(target.bias, bias, f'{scope}/biases')
