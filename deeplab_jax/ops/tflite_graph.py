"""A traced JAX program as a TensorFlow graph the TFLite converter turns
into the official DeepLab files' ops.

jax2tf alone would give each align-corners resize as matrix products
(FULLY_CONNECTED and TRANSPOSE) and the image pooling as a SUM and MUL.
Traced under `tflite_ops()`, each resize is one `resize_bilinear`
primitive: the program is split there, the parts between are converted by
jax2tf and joined by TF's align-corners ResizeBilinear (RESIZE_BILINEAR),
and the image pooling is a window mean (AVERAGE_POOL_2D). Used by the
TFLite export and by CPU inference through LiteRT
(deeplab_jax/inference/engines.py).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from deeplab_jax.errors import MissingDependencyError
from deeplab_jax.ops.dispatch import tflite_ops
from deeplab_jax.ops.resize import resize_bilinear_p


def tensorflow():
  """The `tensorflow` module, an optional extra (MissingDependencyError
  naming it otherwise)."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'This needs TensorFlow, an optional extra: pip install '
        '"deeplab_jax[tf]" (or pip install -r requirements-tf.txt).') from e
  return tf


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


def function_converter(fn: Any, specs: Any) -> tuple[Any, Any]:
  """(tf, a TFLiteConverter) for fn(*inputs) -> an array or a tuple of
  arrays, traced under `tflite_ops()` for inputs of `specs`
  (jax.ShapeDtypeStructs) and converted with the official files' ops.
  The file's signature names the inputs input_0, input_1, ... and the
  outputs output_0, ... in order; a single output keeps TF's own name."""
  tf = tensorflow()
  with tflite_ops():
    closed = jax.make_jaxpr(fn)(*specs)
  run = _as_tf(closed, tf)
  single = len(closed.jaxpr.outvars) == 1

  def tf_fn(*inputs):
    outputs = run(*inputs)
    if single:
      return outputs[0]
    return {f'output_{i}': out for i, out in enumerate(outputs)}

  signature = [tf.TensorSpec(s.shape, tf.as_dtype(np.dtype(s.dtype)),
                             name='images' if len(specs) == 1 else
                             f'input_{i}') for i, s in enumerate(specs)]
  tf_fn = tf.function(tf_fn, autograph=False, input_signature=signature)
  return tf, tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_fn.get_concrete_function()], tf_fn)
