"""TFLite float32: jax2tf (StableHLO inside a TF function), then TensorFlow's
TFLite converter, which lowers it to TFLite builtin ops. Needs the TF extra
(`pip install "deeplab_jax[tf]"`); the file runs under LiteRT
(`ai-edge-litert`, in the core install) without TensorFlow.

Like the official float export: a fixed [1, H, W, 3] float32 input
normalised as the model's own (or uint8 with `export.include_preprocessing`)
and float32 logits at the input size (or `export.output`), with the
official files' ops (deeplab_jax/ops/tflite_graph.py).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from deeplab_jax.data import pipeline
from deeplab_jax.export import serving
from deeplab_jax.models import backbones
from deeplab_jax.ops import tflite_graph


def _converter(model: Any, config: Any):
  fn, dtype = serving.serving_function(model, config)
  height, width = serving.input_size(config)
  return tflite_graph.function_converter(
      fn, [jax.ShapeDtypeStruct((1, height, width, 3), dtype)])


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
