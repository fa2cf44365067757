"""Compiled inference programs: XLA options, the folded-BatchNorm copy,
and multi-scale, flipped probabilities (reference
`predict_labels_multi_scale`).

For each scale the (padded) image is resized with align corners, the model's
logits at its output resolution are resized straight back to the image size,
and softmax probabilities are averaged over scales and left-right flips.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deeplab_jax.models.deeplab import fold_batch_norm
from deeplab_jax.ops.resize import resize_bilinear, scale_dimension


# XLA:CPU hands matrix products to YNNPACK by default; in inference programs
# XLA's own (Eigen) products spread better over the cores (the voc.py model
# at 513: 138 -> 128 ms). Train steps are faster with YNNPACK, so only
# inference jits ask.
CPU_INFERENCE_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def compiler_options() -> dict[str, str]:
  """XLA compile options for inference programs on this backend: the CPU
  ones above where this XLA knows them, else none (its defaults)."""
  if jax.default_backend() != 'cpu':
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_INFERENCE_OPTIONS).lower(
        np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:  # "No such compile option".
    return {}
  return dict(CPU_INFERENCE_OPTIONS)


def jit(fn: Callable, **kwargs) -> Callable:
  """`jax.jit` for an inference program (eval, predict, benchmarks), with
  `compiler_options()`."""
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


def folded(model: nnx.Module) -> nnx.Module:
  """`fold_batch_norm(model)`: the inference copy with BatchNorm folded
  into the convolutions, computed by one compiled program (each of its
  small ops compiling on its own took 4x longer).

  Eval and predict fold once and run the folded copy: weights that do not
  change between images need no BatchNorm arithmetic in the per-image
  program (MobileNetV2's 53 BatchNorms were 53 small kernels a call).
  """
  return nnx.jit(fold_batch_norm)(model)


def predict_probabilities(model, images: jax.Array, *,
                          scales: Sequence[float] = (1.0,),
                          flip: bool = False) -> jax.Array:
  """Class probabilities averaged over scales and flips.

  Args:
    model: a callable like `DeepLab` in inference mode, taking
      (images, upsample=False) and returning logits at its own resolution.
    images: [N, H, W, 3] normalised to [-1, 1].
    scales: image scales, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
    flip: also average the left-right flipped image.

  Returns:
    [N, H, W, num_classes] float32 probabilities.
  """
  height, width = images.shape[1], images.shape[2]
  total, count = None, 0
  for scale in scales:
    if scale == 1.0:
      scaled = images
    else:
      scaled = resize_bilinear(images, (scale_dimension(height, scale),
                                        scale_dimension(width, scale)))
    for flipped in ((False, True) if flip else (False,)):
      inputs = scaled[:, :, ::-1] if flipped else scaled
      logits = model(inputs, upsample=False)
      if flipped:
        logits = logits[:, :, ::-1]
      probs = jax.nn.softmax(
          resize_bilinear(logits.astype(jnp.float32), (height, width)),
          axis=-1)
      total = probs if total is None else total + probs
      count += 1
  return total / count
