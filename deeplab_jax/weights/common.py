"""Assigning arrays to model variables with shape checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deeplab_jax.errors import WeightImportError


def assign(variable: nnx.Variable, value: np.ndarray, name: str) -> None:
  """Copies `value` into `variable`, naming `name` if the shapes differ."""
  value = np.asarray(value)
  if tuple(variable.shape) != tuple(value.shape):
    raise WeightImportError(
        f'{name}: the file has shape {tuple(value.shape)} but the model '
        f'expects {tuple(variable.shape)}. Check that the config (depth '
        'multiplier, channel rounding, head, num_classes) matches the weights.')
  # Replaces the value: the variable may be abstract (a model built with
  # nnx.eval_shape, which the file fills completely).
  variable.set_value(jnp.asarray(value, dtype=variable.get_value().dtype))


def unset_arrays(module: nnx.Module) -> list[str]:
  """Paths of `module`'s arrays that are still shapes (a module built with
  nnx.eval_shape, before weights fill it)."""
  return ['/'.join(map(str, key)) for key, value in nnx.to_flat_state(
      nnx.state(module)) if isinstance(value.get_value(), jax.ShapeDtypeStruct)]


def check_filled(module: nnx.Module, source: str) -> None:
  """WeightImportError unless `source` filled every array of `module` (one
  built with nnx.eval_shape, which leaves shapes until a value is set)."""
  empty = unset_arrays(module)
  if empty:
    raise WeightImportError(
        f'{source} left {len(empty)} arrays of the model unset (first: '
        f'{empty[0]}): the file does not describe this model.')


def set_batch_norm(bn: nnx.BatchNorm, name: str, *, gamma=None, beta=None,
                   mean=None, var=None) -> None:
  """Sets the given BatchNorm variables (None leaves one as it is)."""
  if gamma is not None:
    if bn.scale is None:
      raise WeightImportError(
          f'{name}: the weights have a BatchNorm scale (gamma) but the model '
          'was built with bn_scale=False; set config.model.bn_scale=True.')
    assign(bn.scale, gamma, f'{name}/gamma')
  if beta is not None:
    assign(bn.bias, beta, f'{name}/beta')
  if mean is not None:
    assign(bn.mean, mean, f'{name}/moving_mean')
  if var is not None:
    assign(bn.var, var, f'{name}/moving_variance')


def check_scopes(model_scopes, file_scopes, source: str,
                 allow_extra: bool = False) -> None:
  """WeightImportError if the file and the model hold different layers.

  `model_scopes` come from `DeepLab.tf_scopes()`, `file_scopes` are the TF
  scopes the file holds.
  """
  missing = [s for s in model_scopes if s not in file_scopes]
  extra = [] if allow_extra else [
      s for s in file_scopes if s not in model_scopes]
  if missing or extra:
    parts = []
    if missing:
      parts.append(f'the model has layers the file lacks: {", ".join(missing)}')
    if extra:
      parts.append(f'the file has layers the model lacks: {", ".join(extra)}')
    raise WeightImportError(
        f'{source} does not fit this model: {"; ".join(parts)}. Use the '
        "file's own config (configs/voc_pretrained.py:NAME), or make "
        "config.model's backbone, head and decoder match the file's: e.g. "
        'the published MobileNetV2 models have no atrous ASPP branches and '
        'no decoder (config.model.head.atrous_rates=() and '
        "config.model.decoder.type='upsample').")
