"""TF SavedModel for TF Serving: jax2tf's function (StableHLO inside an
XlaCallModule op) as the `serving_default` signature, with a dynamic batch.
Needs the TF extra to write and TensorFlow to serve.

    loaded = tf.saved_model.load(PATH)
    logits = loaded.signatures['serving_default'](images=images)['outputs']
"""

from __future__ import annotations

import os
from typing import Any

from deeplab_jax.export import serving
from deeplab_jax.ops import tflite_graph


def export(model: Any, config: Any, path: str) -> str:
  tf = tflite_graph.tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  fn, dtype = serving.serving_function(model, config)
  height, width = serving.input_size(config)
  tf_dtype = tf.uint8 if dtype.__name__ == 'uint8' else tf.float32
  converted = jax2tf.convert(fn, with_gradient=False,
                             polymorphic_shapes=['(b, ...)'])
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {'outputs': converted(images)}, autograph=False,
      input_signature=[tf.TensorSpec((None, height, width, 3), tf_dtype,
                                     name='images')])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tf.saved_model.save(module, path,
                      signatures={'serving_default': module.serve})
  return path
