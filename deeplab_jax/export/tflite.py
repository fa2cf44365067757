"""TFLite float32: jax2tf (StableHLO inside a TF function), then TensorFlow's
TFLite converter, which lowers it to TFLite builtin ops. Needs the TF extra
(`pip install "deeplab_jax[tf]"`); the file runs under LiteRT
(`ai-edge-litert`, in the core install) without TensorFlow.

Like the official float export: a fixed [1, H, W, 3] float32 input
normalised as the model's own (or uint8 with `export.include_preprocessing`)
and float32 logits at the input size (or `export.output`), with the
official files' ops: the align-corners resizes are TF's ResizeBilinear
between the jax2tf-converted parts (RESIZE_BILINEAR; as matrix products
they would be FULLY_CONNECTED and TRANSPOSE), image pooling a window mean
(AVERAGE_POOL_2D).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from deeplab_jax.data import pipeline
from deeplab_jax.export import serving
from deeplab_jax.models import backbones
from deeplab_jax.ops import resize_bilinear_p, tflite_ops


def _parts(jaxpr: jex_core.Jaxpr) -> list[tuple[bool, list[Any]]]:
  """The program's equations in order, as runs of XLA equations (False,
  eqns) and single resizes (True, [eqn])."""
  parts = []
  for eqn in jaxpr.eqns:
    if eqn.primitive is resize_bilinear_p:
      parts.append((True, [eqn]))
    elif parts and not parts[-1][0]:
      parts[-1][1].append(eqn)
    else:
      parts.append((False, [eqn]))
  return parts


def _as_tf(closed: jex_core.ClosedJaxpr, tf: Any) -> Any:
  """fn(*tf tensors) -> tf tensors running `closed`: each run of XLA
  equations through jax2tf (one XlaCallModule each, with the weights it
  reads as its constants), each resize as TF's align-corners
  ResizeBilinear, which the TFLite converter keeps as RESIZE_BILINEAR."""
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  jaxpr = closed.jaxpr
  consts = dict(zip(jaxpr.constvars, closed.consts))
  parts = _parts(jaxpr)
  # What each part must hand on: the variables read by later parts or
  # returned.
  needed_after = []
  later = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
  for _, eqns in reversed(parts):
    needed_after.append(set(later))
    for eqn in eqns:
      later.update(v for v in eqn.invars
                   if not isinstance(v, jex_core.Literal))
  needed_after.reverse()

  def run(*inputs):
    env = dict(zip(jaxpr.invars, inputs))
    for (is_resize, eqns), needed in zip(parts, needed_after):
      if is_resize:
        eqn, = eqns
        params = eqn.params
        env[eqn.outvars[0]] = tf.raw_ops.ResizeBilinear(
            images=env[eqn.invars[0]], size=list(params['size']),
            align_corners=params['align_corners'], half_pixel_centers=False)
        continue
      defined = {v for eqn in eqns for v in eqn.outvars}
      reads = _ordered(v for eqn in eqns for v in eqn.invars
                       if not isinstance(v, jex_core.Literal)
                       and v not in defined)
      const_vars = [v for v in reads if v in consts]
      in_vars = [v for v in reads if v not in consts]
      out_vars = _ordered(v for v in (o for eqn in eqns for o in eqn.outvars)
                          if v in needed)
      part = jex_core.ClosedJaxpr(
          jex_core.Jaxpr(const_vars, in_vars, out_vars, eqns),
          [consts[v] for v in const_vars])
      outputs = jax2tf.convert(jex_core.jaxpr_as_fun(part),
                               with_gradient=False)(
                                   *[env[v] for v in in_vars])
      env.update(zip(out_vars, outputs))
    return [v.val if isinstance(v, jex_core.Literal) else env[v]
            for v in jaxpr.outvars]

  return run


def _ordered(items) -> list[Any]:
  return list(dict.fromkeys(items))


def _converter(model: Any, config: Any):
  tf = serving.tensorflow()
  fn, dtype = serving.serving_function(model, config)
  height, width = serving.input_size(config)
  with tflite_ops():
    closed = jax.make_jaxpr(fn)(
        jax.ShapeDtypeStruct((1, height, width, 3), dtype))
  run = _as_tf(closed, tf)
  tf_dtype = tf.uint8 if dtype.__name__ == 'uint8' else tf.float32
  tf_fn = tf.function(
      lambda images: run(images)[0], autograph=False,
      input_signature=[tf.TensorSpec((1, height, width, 3), tf_dtype,
                                     name='images')])
  return tf, tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_fn.get_concrete_function()], tf_fn)


def _write(flatbuffer: bytes, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(flatbuffer)
  return path


def export(model: Any, config: Any, path: str) -> str:
  """Float32 TFLite."""
  _, converter = _converter(model, config)
  return _write(converter.convert(), path)


def calibration_images(config: Any) -> list[np.ndarray]:
  """`export.calibration_images` uint8 [1, H, W, 3] images of
  `export.calibration_split` (training images by default: not the ones the
  int8 report scores), unaugmented, fitted to the export's input as
  evaluation feeds it."""
  c = config.copy_and_resolve_references()
  c.eval.input_scale, c.eval.mode = 'fit', 'whole'
  c.eval.crop_size = serving.input_size(config)[0]
  preprocessing = backbones.preprocessing(c.model)
  images = []
  for example in pipeline.eval_loader(c, split=config.export.calibration_split):
    images.append(preprocessing.denormalize(example['image'])[None])
    if len(images) >= config.export.calibration_images:
      break
  return images


def export_int8(model: Any, config: Any, path: str) -> str:
  """Full-integer TFLite: int8 weights and activations, calibrated on
  `calibration_images`; uint8 RGB in (normalisation inside), float32
  logits out (dequantised at the output), so that a runtime reads it like
  the float file."""
  config = config.copy_and_resolve_references()
  config.export.include_preprocessing = True
  images = calibration_images(config)
  tf, converter = _converter(model, config)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([x] for x in images)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_output_type = tf.float32
  return _write(converter.convert(), path)
