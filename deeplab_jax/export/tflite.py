"""TFLite float32: jax2tf (StableHLO inside a TF function), then TensorFlow's
TFLite converter, which lowers it to TFLite builtin ops. Needs the TF extra
(`pip install "deeplab_jax[tf]"`); the file runs under LiteRT
(`ai-edge-litert`, in the core install) without TensorFlow.

Like the official float export: a fixed [1, H, W, 3] float32 input
normalised as the model's own (or uint8 with `export.include_preprocessing`)
and float32 logits at the input size (or `export.output`).
"""

from __future__ import annotations

import os
from typing import Any

from deeplab_jax.errors import MissingDependencyError
from deeplab_jax.export import serving


def _tensorflow():
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'Exporting to TFLite needs TensorFlow, an optional extra: pip install '
        '"deeplab_jax[tf]" (or pip install -r requirements-tf.txt).') from e
  return tf


def export(model: Any, config: Any, path: str) -> str:
  tf = _tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  fn, dtype = serving.serving_function(model, config)
  height, width = serving.input_size(config)
  tf_dtype = tf.uint8 if dtype.__name__ == 'uint8' else tf.float32
  tf_fn = tf.function(
      jax2tf.convert(fn, with_gradient=False), autograph=False,
      input_signature=[tf.TensorSpec((1, height, width, 3), tf_dtype,
                                     name='images')])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_fn.get_concrete_function()], tf_fn)
  flatbuffer = converter.convert()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(flatbuffer)
  return path
