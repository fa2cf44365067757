"""Exported models by format: `EXPORT_FORMATS[name](model, config, path)`.

    python main.py --config=... --workdir=W --mode=export --export_format=tflite

exports the newest checkpoint of W (or `config.train.init_from`) at
`config.eval.output_stride`, with BatchNorm folded into the convolutions.
Adding a format: a module here with an `export(model, config, path)` that
writes the file and returns its path, one line in `EXPORT_FORMATS`, its
test in tests/export/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deeplab_jax.errors import ConfigError
from deeplab_jax.export import onnx, saved_model, stablehlo, tflite
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


__all__ = ['EXPORT_FORMATS', 'get_exporter', 'serving_function']


def export(model: Any, config: Any, format_name: str, path: str) -> str:
  """Writes `model` in `format_name` to `path`; returns the path."""
  function, _ = get_exporter(format_name)
  return function(model, config, path)
