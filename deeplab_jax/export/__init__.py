"""Exported models by format: `EXPORT_FORMATS[name]`.

    python main.py --config=... --workdir=W --mode=export --export_format=tflite

exports the newest checkpoint of W (or `config.train.init_from`) at
`config.eval.output_stride`, with BatchNorm folded into the convolutions.
Adding a format: a module here with an `export(model, config, path)` that
writes the file and returns its path, one line in `EXPORT_FORMATS`, its
test in tests/export/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from deeplab_jax.export import onnx, saved_model, stablehlo, tflite
from deeplab_jax.export.serving import serving_function
from deeplab_jax.registry import Registry

class ExportFormat(NamedTuple):
  """How a format writes (model, config, path) -> path, and the suffix
  of its default file name."""
  export: Callable[..., str]
  suffix: str


EXPORT_FORMATS = Registry('export format', '--export_format', {
    'tflite': ExportFormat(tflite.export, '.tflite'),
    'tflite_int8': ExportFormat(tflite.export_int8, '_int8.tflite'),
    'onnx': ExportFormat(onnx.export, '.onnx'),
    'stablehlo': ExportFormat(stablehlo.export, '.stablehlo'),
    'saved_model': ExportFormat(saved_model.export, '_saved_model'),  # A dir.
})


def get_exporter(name: str | None) -> ExportFormat:
  return EXPORT_FORMATS.lookup(name)


__all__ = ['EXPORT_FORMATS', 'ExportFormat', 'get_exporter',
           'serving_function']


def export(model: Any, config: Any, format_name: str, path: str) -> str:
  """Writes `model` in `format_name` to `path`; returns the path."""
  return get_exporter(format_name).export(model, config, path)
