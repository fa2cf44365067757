"""ONNX: our float TFLite export (`tflite.py`), converted by tf2onnx's
TFLite front end and checked by onnxruntime in the tests.

Why this route: the TFLite graph already has BatchNorm folded and ReLU6
fused into its convolutions, and tf2onnx keeps that (Conv + Clip: 119
nodes for the dm0.5 model); jax2onnx traced the JAX function to 147 nodes
(ReLU6 as separate Max and Min) and pins orbax-checkpoint below this
project's version, so it cannot be installed beside it. Needs the TF extra
and `tf2onnx` (`pip install "deeplab_jax[tf]"`); the file runs under
onnxruntime without TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from deeplab_jax.errors import MissingDependencyError
from deeplab_jax.export import tflite


def export(model: Any, config: Any, path: str) -> str:
  try:
    import tf2onnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'Exporting to ONNX needs tf2onnx, in the TF extra: pip install '
        '"deeplab_jax[tf]" (or pip install -r requirements-tf.txt).') from e
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    float_file = tflite.export(model, config, os.path.join(tmp, 'm.tflite'))
    tf2onnx.convert.from_tflite(float_file, output_path=path)
  return path
