"""Running an exported file where the eval code runs the Flax model:
`config.eval.runtime` (a name of `RUNTIMES`: 'litert', 'onnxruntime',
'stablehlo', 'saved_model') with `config.eval.model_file`. Adding a
runtime: its function (file, check) -> (images -> outputs) and one line in
`RUNTIMES`.

A runtime maps normalised float32 images [N, S, S, 3] (what the eval
pipeline gives the model) to class scores [N, S, S, classes] that act as
logits (a file that outputs probabilities gives their logarithm), so that
evaluation and prediction measure an export with the same policy and
metrics as the model it came from. Files taking uint8
(`export.include_preprocessing`) get the pixels back through the backbone's
`denormalize`.

Exported files keep a fixed S x S input. An image that does not fit it is
slid over (`config.eval.mode`, deeplab_jax/inference/segmenter.py): tiles
of S x S every `eval.tile_stride` pixels, each run through the file, and
the scores at every e-th pixel (e = the model's logit stride: there the
file's align-corners upsampling returns its logits exactly) summed on one
grid and averaged where tiles overlap. By hand, for one [H, W, 3] image:

    run = make_scores(config)                       # [1, S, S, 3] -> scores
    for top in range(0, H - S + stride, stride):    # rows of tiles ...
      for left in range(0, W - S + stride, stride): # ... padded past the edge
        scores = run(pad(image[top:top + S, left:left + S]))
        total[top:top + S, left:left + S] += scores[0]; count[...] += 1
    classes = argmax(total / count)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from deeplab_jax import distributed
from deeplab_jax.errors import ConfigError, MissingDependencyError
from deeplab_jax.models import backbones
from deeplab_jax.registry import Registry

def _litert(path: str, check: Callable[..., None]
            ) -> Callable[[np.ndarray], np.ndarray]:
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'eval.runtime=litert needs LiteRT: pip install ai-edge-litert') from e
  try:
    interpreter = Interpreter(model_path=path, num_threads=distributed.available_cores())
  except ValueError as e:
    raise ConfigError(f'{path} is not a TFLite file LiteRT can read ({e}).'
                      ) from None
  interpreter.allocate_tensors()
  source = interpreter.get_input_details()[0]
  target = interpreter.get_output_details()[0]
  check(path, tuple(source['shape']), tuple(target['shape']))

  def run(image: np.ndarray) -> np.ndarray:  # One [1, H, W, 3] at a time.
    interpreter.set_tensor(source['index'], image.astype(source['dtype']))
    interpreter.invoke()
    return interpreter.get_tensor(target['index'])

  return lambda images: np.concatenate([run(x[None]) for x in images])


def _onnxruntime(path: str, check: Callable[..., None]
                 ) -> Callable[[np.ndarray], np.ndarray]:
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'eval.runtime=onnxruntime needs it: pip install onnxruntime') from e
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  check(path, tuple(session.get_inputs()[0].shape),
        tuple(session.get_outputs()[0].shape))
  # The TFLite-derived graph has a fixed batch of 1.
  return lambda images: np.concatenate(
      [session.run(None, {name: x[None]})[0] for x in images])


def _stablehlo(path: str, check: Callable[..., None]
               ) -> Callable[[np.ndarray], np.ndarray]:
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  check(path, tuple(exported.in_avals[0].shape),
        tuple(exported.out_avals[0].shape))
  return lambda images: np.asarray(exported.call(images))


def _saved_model(path: str, check: Callable[..., None]
                 ) -> Callable[[np.ndarray], np.ndarray]:
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependencyError(
        'eval.runtime=saved_model needs TensorFlow, an optional extra: pip '
        'install "deeplab_jax[tf]"') from e
  try:
    serve = tf.saved_model.load(path).signatures['serving_default']
  except (OSError, KeyError, ValueError) as e:
    raise ConfigError(f'{path} is not a SavedModel with a serving_default '
                      f'signature ({e}).') from None
  spec = serve.structured_input_signature[1]['images']
  output = next(iter(serve.structured_outputs.values()))
  check(path, tuple(spec.shape), tuple(output.shape))
  return lambda images: serve(images=tf.constant(
      images, dtype=spec.dtype))['outputs'].numpy()


# config.eval.runtime -> (file, check) -> images -> outputs; 'jax' (the
# Flax model itself) is the default and not a file.
RUNTIMES = Registry('eval runtime', 'config.eval.runtime', {
    'litert': _litert,
    'onnxruntime': _onnxruntime,
    'stablehlo': _stablehlo,
    'saved_model': _saved_model,
})


def runtime_names() -> tuple[str, ...]:
  """The values `config.eval.runtime` takes."""
  return ('jax',) + RUNTIMES.names()


def _check(path: str, input_shape: tuple, output_shape: tuple, *,
           size: tuple[int, int], classes: int) -> None:
  """ConfigError when the file's input size or classes are not the
  config's (symbolic or unknown dimensions pass)."""
  def known(d):  # numpy ints (LiteRT) count; names and None do not.
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else None

  hw = tuple(known(d) for d in input_shape[1:3])
  if None not in hw and hw != size:
    raise ConfigError(
        f'{path} takes {hw[0]}x{hw[1]} images, the config gives {size[0]}x'
        f'{size[1]}: set config.eval.crop_size={hw[0]} (images larger than '
        "that are slid over, or shrunk with config.eval.input_scale='fit').")
  last = known(output_shape[-1]) if len(output_shape) == 4 else None
  if last is not None and last != classes:
    raise ConfigError(
        f'{path} scores {last} classes, the config has {classes} '
        '(config.model.num_classes): use the config it was exported with.')


def grid_stride(config: Any, size: int) -> int:
  """Pixels between the exported model's own logits in its S x S output:
  the decoder's stride (4) or the output stride, where S - 1 is a
  multiple of it (else 1: every pixel)."""
  stride = (4 if config.model.decoder.type == 'deeplabv3plus'
            else int(config.eval.output_stride))
  return stride if (size - 1) % stride == 0 else 1


def make_scores(config: Any) -> Callable[[np.ndarray], np.ndarray]:
  """images -> scores (logits, or log-probabilities) for
  `config.eval.model_file` under `config.eval.runtime` (ConfigError for what
  cannot work)."""
  e = config.eval
  path = e.model_file
  if not path or not os.path.exists(path):
    raise ConfigError(
        f'config.eval.runtime={e.runtime!r} evaluates an exported file: set '
        f'config.eval.model_file to one (now {path!r}; --mode=export writes '
        'them).')
  if tuple(float(s) for s in e.scales) != (1.0,) or e.flip:
    raise ConfigError(
        'An exported file is evaluated at one scale without flips: set '
        'config.eval.scales=1.0 and config.eval.flip=False.')
  check = functools.partial(_check, size=(int(e.crop_size),) * 2,
                            classes=int(config.model.num_classes))
  run = RUNTIMES.lookup(e.runtime)(path, check)
  preprocessing = backbones.preprocessing(config.model)
  include = config.export.include_preprocessing
  output = config.export.output

  if output == 'argmax':
    raise ConfigError('Evaluating needs scores: export with '
                      "config.export.output='logits' or 'probabilities'.")

  def scores(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if include:
      images = preprocessing.denormalize(images)
    out = np.asarray(run(images), np.float32)
    if output == 'probabilities':  # Softmax is shift-invariant: log p works.
      return np.log(np.maximum(out, np.float32(1e-30)))
    return out

  return scores
