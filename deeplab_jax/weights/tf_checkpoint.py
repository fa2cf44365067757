"""DeepLab model-zoo TF checkpoints (unfolded BatchNorm) -> the Flax model.

The zoo's `deeplabv3_*.tar.gz` archives (MobileNetV2, Xception-65) hold
`model.ckpt-*` files with variables named `<scope>/weights` (HWIO), `<scope>/depthwise_weights`
([kh, kw, C, 1]), `<scope>/BatchNorm/{gamma,beta,moving_mean,
moving_variance}` and `logits/semantic/{weights,biases}`; its ImageNet
backbone checkpoints (ResNet v1 beta, Xception-65) only the backbone's
(`load_into(..., backbone_only=True)`). Reading them needs
TensorFlow (installed with this project's requirements; a clear message
otherwise).
"""

from __future__ import annotations

import glob
import os
import tarfile

import numpy as np
from absl import logging

from deeplab_jax.errors import MissingDependencyError, WeightImportError
from deeplab_jax.models.deeplab import DeepLab
from deeplab_jax.models.layers import ConvBN
from deeplab_jax.weights.common import assign, check_scopes, set_batch_norm


def _tensorflow():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        'Reading TF model-zoo checkpoints needs TensorFlow, an optional extra: '
        'pip install "deeplab_jax[tf]" (or pip install -r requirements-tf.txt);'
        ' the TFLite exports need no TensorFlow.') from e
  return tf


def checkpoint_prefix(path: str | os.PathLike, extract_to: str | None = None
                      ) -> str:
  """The checkpoint prefix for a prefix, a folder, or a zoo .tar.gz."""
  path = str(path)
  if path.endswith(('.tar.gz', '.tgz', '.tar')):
    target = extract_to or path.rsplit('.tar', 1)[0].rsplit('.tgz', 1)[0]
    if not os.path.isdir(target):
      with tarfile.open(path) as archive:
        archive.extractall(target, filter='data')
    path = target
  if os.path.isdir(path):
    indices = sorted(
        p[:-len('.index')]
        for p in glob.glob(os.path.join(path, '**', '*.index'), recursive=True))
    if not indices:
      raise WeightImportError(f'{path} holds no TF checkpoint (*.index).')
    return indices[-1]
  if not os.path.exists(path + '.index'):
    raise WeightImportError(f'{path} is not a TF checkpoint (no {path}.index).')
  return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{variable name: array} of a TF checkpoint."""
  tf = _tensorflow()
  prefix = checkpoint_prefix(path)
  reader = tf.train.load_checkpoint(prefix)
  return {name: np.asarray(reader.get_tensor(name))
          for name in reader.get_variable_to_shape_map()}


def variable_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
  """{variable name: shape} of a TF checkpoint, without reading values."""
  tf = _tensorflow()
  return dict(tf.train.load_checkpoint(
      checkpoint_prefix(path)).get_variable_to_shape_map())


def _file_scopes(variables: dict[str, np.ndarray]) -> set[str]:
  scopes = set()
  for name in variables:
    for suffix in ('/weights', '/depthwise_weights'):
      if name.endswith(suffix):
        scopes.add(name[:-len(suffix)])
  return scopes


def load_into(model: DeepLab, variables: dict[str, np.ndarray],
              source: str, *, backbone_only: bool = False) -> list[str]:
  """Copies checkpoint variables (BatchNorm unfolded) into `model`.

  Args:
    model: the DeepLab model (its `tf_scopes()` name every layer).
    variables: {TF variable name: array}, e.g. from `read_checkpoint`.
    source: the file's name, for messages.
    backbone_only: load only the backbone's layers (an ImageNet checkpoint
      of the backbone, which has no head, decoder or classifier).

  Returns:
    The names of the variables used (the rest were not: optimizer slots,
    `global_step`, layers this model does not have).
  """
  scopes = model.backbone.tf_scopes() if backbone_only else model.tf_scopes()
  file_scopes = _file_scopes(variables)
  # Checkpoints may carry layers DeepLab does not use (e.g. MobilenetV2's
  # 1280-channel Conv_1): only what the model lacks is an error.
  check_scopes(scopes, file_scopes, source, allow_extra=True)
  unused = sorted(file_scopes - set(scopes))
  if unused:
    logging.info('%s: not used by this model: %s', source, ', '.join(unused))
  used = []

  def take(name):
    used.append(name)
    return variables[name]

  for scope, target in scopes.items():
    if isinstance(target, ConvBN):
      if f'{scope}/depthwise_weights' in variables:
        kernel = take(f'{scope}/depthwise_weights')
        kh, kw, c, m = kernel.shape
        kernel = kernel.reshape(kh, kw, 1, c * m)
      else:
        kernel = take(f'{scope}/weights')
      assign(target.conv.kernel, kernel, f'{scope}/weights')
      bn = f'{scope}/BatchNorm'
      if f'{bn}/moving_mean' not in variables:
        raise WeightImportError(f'{source} has no {bn}/moving_mean.')
      set_batch_norm(
          target.bn, bn,
          gamma=take(f'{bn}/gamma') if f'{bn}/gamma' in variables else None,
          beta=take(f'{bn}/beta'), mean=take(f'{bn}/moving_mean'),
          var=take(f'{bn}/moving_variance'))
    else:
      assign(target.kernel, take(f'{scope}/weights'), f'{scope}/weights')
      if target.bias is not None:
        assign(target.bias, take(f'{scope}/biases'), f'{scope}/biases')
  return used
