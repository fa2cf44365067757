"""The function every export format serializes.

[N, H, W, 3] images -> logits, probabilities or class ids at the input size,
through the model in inference mode with BatchNorm folded into the convs
and XLA's native ops (no CPU-specific rewrites: the file runs elsewhere).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deeplab_jax.models import backbones, fold_batch_norm
from deeplab_jax.ops import native_ops

OUTPUTS = ('logits', 'probabilities', 'argmax')


def input_size(config: Any) -> tuple[int, int]:
  """(H, W) of the exported input: export.input_size, else the eval crop."""
  size = config.export.input_size or config.eval.crop_size
  return (int(size), int(size))


def serving_function(model: nnx.Module, config: Any):
  """fn(images) -> outputs, and the input's dtype.

  Args:
    model: the DeepLab model (any mode; its inference view is exported).
    config: `config.export.include_preprocessing` (uint8 RGB in, the
      backbone's normalisation inside, as the official mobile exports), else
      float32 input normalised like the model's own (MobileNetV2:
      x / 127.5 - 1); `config.export.output`: 'logits' (float32
      [N, H, W, classes]), 'probabilities' (softmax of them) or 'argmax'
      (int32 [N, H, W]).

  Returns:
    (fn, input dtype).
  """
  folded = fold_batch_norm(model)
  graphdef, state = nnx.split(folded)
  state = jax.tree.map(np.asarray, state)  # Constants of the exported graph.
  preprocessing = backbones.preprocessing(config.model)
  include = config.export.include_preprocessing
  output = config.export.output

  def fn(images):
    x = images
    if include:
      x = preprocessing.normalize_jax(x)
    with native_ops():
      logits = nnx.merge(graphdef, state)(x)
    if output == 'probabilities':
      return jax.nn.softmax(logits, axis=-1)
    if output == 'argmax':
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return logits

  return fn, (jnp.uint8 if include else jnp.float32)
