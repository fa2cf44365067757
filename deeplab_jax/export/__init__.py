"""Exported models by format: `EXPORT_FORMATS[name](model, config, path)`.

    python main.py --config=... --workdir=W --mode=export --export_format=tflite

exports the newest checkpoint of W (or `config.train.init_from`) at
`config.eval.output_stride`, with BatchNorm folded into the convolutions.
Adding a format: a module here with an `export(model, config, path)` that
writes the file and returns its path, one line in `EXPORT_FORMATS`, its
test in tests/export/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from deeplab_jax.errors import ConfigError
from deeplab_jax.export import onnx, saved_model, stablehlo, tflite
from deeplab_jax.export import serving
from deeplab_jax.export.serving import serving_function

EXPORT_FORMATS: dict[str, tuple[Callable[..., str], str]] = {
    # name: (export function, file suffix)
    'tflite': (tflite.export, '.tflite'),
    'tflite_int8': (tflite.export_int8, '_int8.tflite'),
    'onnx': (onnx.export, '.onnx'),
    'stablehlo': (stablehlo.export, '.stablehlo'),
    'saved_model': (saved_model.export, '_saved_model'),  # A folder.
}


def get_exporter(name: str | None) -> tuple[Callable[..., str], str]:
  if name not in EXPORT_FORMATS:
    raise ConfigError(
        f'--export_format={name!r} is not a format: use one of '
        f'{", ".join(EXPORT_FORMATS)}.')
  return EXPORT_FORMATS[name]


__all__ = ['EXPORT_FORMATS', 'get_exporter', 'int8_report', 'serving_function']


def export(model: Any, config: Any, format_name: str, path: str) -> str:
  """Writes `model` in `format_name` to `path`; returns the path."""
  function, _ = get_exporter(format_name)
  return function(model, config, path)


def int8_report(model: Any, config: Any, path: str) -> dict[str, Any]:
  """Scores the Flax model and its int8 file `path` with the same eval code
  (one scale, no flips, images resized to the export's input) on the eval
  split (`eval.max_images` of it), and writes the figures to PATH.json."""
  from deeplab_jax import evaluate  # pylint: disable=import-outside-toplevel
  c = config.copy_and_resolve_references()
  c.eval.scales, c.eval.flip = (1.0,), False
  c.eval.input_scale, c.eval.mode = 'fit', 'whole'
  c.eval.crop_size = serving.input_size(config)[0]
  c.eval.num_result_images = 0
  evaluator = evaluate.Evaluator(c)
  float_summary = evaluator.evaluate(model, workdir=None)
  c.eval.runtime, c.eval.model_file = 'litert', path
  c.export.include_preprocessing = True
  int8_summary = evaluate.evaluate(c, None, workdir=None)
  report = {
      'file': os.path.basename(path), 'bytes': os.path.getsize(path),
      'calibration_images': config.export.calibration_images,
      'dataset': c.data.dataset, 'split': int8_summary['split'],
      'images': int8_summary['images'],
      'float_miou': float_summary['miou'], 'int8_miou': int8_summary['miou'],
      'float_pixel_accuracy': float_summary['pixel_accuracy'],
      'int8_pixel_accuracy': int8_summary['pixel_accuracy'],
  }
  with open(path + '.json', 'w') as f:
    json.dump(report, f, indent=2)
  return report
