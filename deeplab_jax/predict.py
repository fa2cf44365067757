"""Predict: a folder of photos in, colour masks and overlays out.

Each image is resized so that its longer side is at most
`config.eval.crop_size` (as the reference demo does), padded to a square of
that size (one compiled shape for every photo), segmented with the eval
settings, and the class map is resized back to the photo's size. A file that
is not an image is reported by name and skipped; the rest go on.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from deeplab_jax import inference, visualize
from deeplab_jax.data import augment
from deeplab_jax.data.datasets import class_names as dataset_class_names
from deeplab_jax.data.datasets import dataset_spec
from deeplab_jax.errors import DatasetError
from deeplab_jax.evaluate import Progress
from deeplab_jax.models import backbones, inference_view


def make_segmenter(model: nnx.Module, config: ml_collections.ConfigDict):
  """(uint8 [H, W, 3] RGB photo) -> ([H, W] uint8 class ids, [H, W] float32
  confidence = the winning class's probability)."""
  graphdef, state = nnx.split(inference_view(model))
  size = config.eval.crop_size
  preprocessing = backbones.preprocessing(config.model)
  scales = tuple(float(s) for s in config.eval.scales)

  @jax.jit
  def run(state, image):
    probs = inference.predict_probabilities(
        nnx.merge(graphdef, state), image[None], scales=scales,
        flip=config.eval.flip)[0]
    return jnp.argmax(probs, -1).astype(jnp.uint8), jnp.max(probs, -1)

  def segment(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = photo.shape[:2]
    padded, (small_h, small_w) = augment.fit_and_pad(photo, size,
                                                     preprocessing)
    classes, confidence = jax.device_get(run(state, padded))
    classes = classes[:small_h, :small_w]
    confidence = confidence[:small_h, :small_w]
    if (small_h, small_w) != (height, width):
      classes = np.asarray(Image.fromarray(classes).resize(
          (width, height), Image.NEAREST))
      confidence = np.asarray(Image.fromarray(confidence, 'F').resize(
          (width, height), Image.BILINEAR))
    return classes, confidence

  return segment


def read_photo(path: epath.Path) -> np.ndarray:
  """RGB uint8 pixels; raises OSError/ValueError if it is not an image."""
  with Image.open(path) as image:
    image.load()
    return np.asarray(image.convert('RGB'))


def predict_folder(config: ml_collections.ConfigDict, model: nnx.Module,
                   images_dir: str, output_dir: str) -> dict[str, Any]:
  """Segments every image file in `images_dir` into `output_dir`.

  Writes <name>_mask.png (palette PNG whose values are class ids),
  <name>_overlay.png, and predictions.json (class fractions per image).
  """
  source = epath.Path(images_dir)
  if not source.is_dir():
    raise DatasetError(f'--images={images_dir} is not a folder of images.')
  files = sorted(p for p in source.iterdir() if p.is_file())
  if not files:
    raise DatasetError(f'--images={images_dir} holds no files.')
  out = epath.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  class_names = dataset_class_names(config)
  palette = dataset_spec(config.data.dataset).palette
  segment = make_segmenter(model, config)
  results, skipped = {}, []
  progress = Progress('predict', len(files))
  for path in files:
    try:
      photo = read_photo(path)
    except (OSError, ValueError, SyntaxError) as e:
      print(f'\nSkipping {path}: not a readable image ({e}).',
            file=sys.stderr, flush=True)
      skipped.append(str(path))
      progress.update()
      continue
    classes, _ = segment(photo)
    stem = path.stem
    visualize.save_mask_png(classes, out / f'{stem}_mask.png', palette)
    visualize.save_png(visualize.overlay(photo, classes, palette),
                       out / f'{stem}_overlay.png')
    counts = np.bincount(classes.reshape(-1), minlength=len(class_names))
    results[path.name] = {
        name: round(float(c) / classes.size, 4)
        for name, c in zip(class_names, counts) if c
    }
    progress.update()
  progress.close()
  summary = {'images': len(results), 'skipped': skipped,
             'class_fractions': results}
  (out / 'predictions.json').write_text(json.dumps(summary, indent=2))
  return summary
