"""Multi-scale, flipped inference (reference `predict_labels_multi_scale`).

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
from deeplab_jax.models.layers import (interpolation_taps, resize_bilinear,
                                       scale_dimension)


# XLA:CPU hands matrix products to YNNPACK by default; in inference programs
# XLA's own (Eigen) products spread better over the cores: the official
# dm0.5 257 model 13.5 -> 12.4 ms and the voc.py model at 513 138 -> 128 ms
# (2 cores, same outputs within 1.1e-5). Train steps are faster with YNNPACK
# (batch 4 at 513: 4.30 against 5.07 s), so only inference jits ask.
_CPU_INFERENCE_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def compiler_options() -> dict[str, str]:
  """XLA compile options for inference programs on this backend: the CPU
  ones above where this XLA knows them, else none (its defaults)."""
  if jax.default_backend() != 'cpu':
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_INFERENCE_OPTIONS).lower(
        np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:  # "No such compile option".
    return {}
  return dict(_CPU_INFERENCE_OPTIONS)


def jit(fn: Callable, **kwargs) -> Callable:
  """`jax.jit` for an inference program (eval, predict, benchmarks), with
  `compiler_options()`."""
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


def folded(model: nnx.Module) -> nnx.Module:
  """`fold_batch_norm(model)`: the inference copy with BatchNorm folded
  into the convolutions, computed by one compiled program (0.7 s for
  MobileNetV2; each of its small ops compiling on its own took 2.8 s).

  Eval and predict fold once and run the folded copy: weights that do not
  change between images need no BatchNorm arithmetic in the per-image
  program, which computed rsqrt(var + eps) * gamma for each of MobileNetV2's
  53 BatchNorms at every call, one small kernel each (113 -> 60 kernels;
  the official dm0.5 257 model 10.64 -> 10.00 ms on 2 cores, its logits
  within 2e-5).
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


def _blend_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
  """`x` resized along `axis` to `out_size`, bilinear with align corners."""
  lo, hi, frac = interpolation_taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = frac.astype(x.dtype).reshape(shape)
  low = np.take(x, lo, axis=axis)
  out = np.take(x, hi, axis=axis)
  out -= low  # In place: one temporary fewer (1.5x faster at VOC sizes).
  out *= frac
  out += low
  return out


def to_original_size(probabilities: np.ndarray, valid: Sequence[int],
                     size: Sequence[int]) -> np.ndarray:
  """Class ids at the original image size from probabilities of a resized
  and padded input (host-side numpy, any size).

  Args:
    probabilities: [S, S, C] for the padded square input.
    valid: (h, w) of the resized image inside the square.
    size: (H, W) of the original image.

  Returns:
    [H, W] int class ids: the valid region's probabilities resized with
    align corners, then argmax.
  """
  h, w = int(valid[0]), int(valid[1])
  probs = np.asarray(probabilities[:h, :w], np.float32)
  # Each output value blends two rows, then two columns, where products
  # with the interpolation matrices did h + w multiply-adds: a 500x375 VOC
  # image from a 257 input, 21 classes, 29.5 -> 20.8 ms with the argmax
  # (np.einsum of the matrices took 0.5-0.7 s).
  resized = _blend_axis(probs, int(size[0]), axis=0)  # [H, w, C]
  resized = _blend_axis(resized, int(size[1]), axis=1)  # [H, W, C]
  return np.argmax(resized, axis=-1)
