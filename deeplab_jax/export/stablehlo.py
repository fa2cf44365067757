"""StableHLO (`jax.export`): a serialized, versioned artefact that JAX runs
without this package's model code.

Loading it needs jax only:

    import jax
    exported = jax.export.deserialize(open(PATH, 'rb').read())
    logits = exported.call(images)   # [N, H, W, 3] as the export says

The batch is symbolic (any N); height and width are fixed
(`serving.input_size`).
"""

from __future__ import annotations

import os
from typing import Any

import jax

from deeplab_jax.export import serving


def export(model: Any, config: Any, path: str) -> str:
  fn, dtype = serving.serving_function(model, config)
  height, width = serving.input_size(config)
  batch, = jax.export.symbolic_shape('batch')
  exported = jax.export.export(jax.jit(fn))(
      jax.ShapeDtypeStruct((batch, height, width, 3), dtype))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  return path


def load(path: str):
  """The exported function: images -> outputs (see the module docstring)."""
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read())).call
