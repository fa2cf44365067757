"""Which kernel a layer runs, decided at trace time.

XLA:CPU gets this package's rewrites (its own depthwise, 1x1 and kernel
gradient convolutions are slow there); `native_ops()` turns them off while
tracing a file for another runtime (TFLite, ONNX), which wants plain ops.
"""

from __future__ import annotations

import contextlib
import threading

import jax

# Set by `native_ops()`: trace with XLA's own convolutions everywhere, for
# exported files that run on other runtimes (TFLite, ONNX, GPUs).
_NATIVE_ONLY = threading.local()


@contextlib.contextmanager
def native_ops():
  """Within it, convolutions trace to plain `lax.conv_general_dilated` (no
  CPU rewrites: shifted depthwise sums, 1x1 dots, dense_conv)."""
  previous = getattr(_NATIVE_ONLY, 'value', False)
  _NATIVE_ONLY.value = True
  try:
    yield
  finally:
    _NATIVE_ONLY.value = previous


# Set by `tflite_ops()`: resizes trace to the `resize_bilinear` primitive
# and global means to a window sum, which become TFLite's own ops.
_TFLITE = threading.local()


@contextlib.contextmanager
def tflite_ops():
  """Within `native_ops()` too, and also: each align-corners resize traces
  to one `resize_bilinear` primitive (identities included, as the
  reference's graph has them), which the TFLite exporter replaces with TF's
  ResizeBilinear, and global average pooling to a window sum, which the
  converter lowers to AVERAGE_POOL_2D: the official files' ops."""
  previous = getattr(_TFLITE, 'value', False)
  _TFLITE.value = True
  try:
    with native_ops():
      yield
  finally:
    _TFLITE.value = previous


def tflite_ops_active() -> bool:
  """Inside `tflite_ops()`."""
  return getattr(_TFLITE, 'value', False)


def native_ops_active() -> bool:
  """Inside `native_ops()`: trace plain ops, as exports need."""
  return getattr(_NATIVE_ONLY, 'value', False)


def cpu_rewrites() -> bool:
  """XLA:CPU, outside `native_ops()`: this package's rewrites apply."""
  return jax.default_backend() == 'cpu' and not native_ops_active()


def is_nhwc(dimension_numbers) -> bool:
  """Whether a conv's dimension numbers are NHWC / HWIO / NHWC."""
  return (dimension_numbers is not None and
          tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and
          tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1) and
          tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))


def on_gpu() -> bool:
  """The default backend is a GPU."""
  return jax.default_backend() in ('gpu', 'cuda', 'rocm')
