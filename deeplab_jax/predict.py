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
from deeplab_jax.models import backbones


def make_segmenter(model: nnx.Module | None,
                   config: ml_collections.ConfigDict):
  """(uint8 [H, W, 3] RGB photo) -> ([H, W] uint8 class ids, [H, W] float32
  confidence = the winning class's probability).

  `model` None: `config.eval.runtime` runs `config.eval.model_file`, an
  exported file, instead (deeplab_jax/export/runtimes.py).
  """
  size = config.eval.crop_size
  preprocessing = backbones.preprocessing(config.model)
  scales = tuple(float(s) for s in config.eval.scales)
  if model is None:
    from deeplab_jax.export import runtimes  # pylint: disable=import-outside-toplevel
    probabilities = runtimes.make_runtime(config)
    state = None

    def run(state, image):
      del state
      probs = probabilities(image[None])[0]
      return np.argmax(probs, -1).astype(np.uint8), np.max(probs, -1)
  else:
    # Folded once: BatchNorm's arithmetic is not in the per-photo program.
    graphdef, state = nnx.split(inference.folded(model))
    # The weights as a flat list, flattened once: jit flattens an nnx.State
    # at every call (0.7 ms of a 13 ms photo at 257 on 2 cores).
    state, treedef = jax.tree.flatten(state)

    @inference.jit
    def run(state, image):
      probs = inference.predict_probabilities(
          nnx.merge(graphdef, jax.tree.unflatten(treedef, state)),
          image[None], scales=scales, flip=config.eval.flip)[0]
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


class ImageTooLargeError(ValueError):
  """An image has more pixels than config.eval.max_image_pixels."""


def read_photo(path: epath.Path, max_pixels: int | None = None
               ) -> np.ndarray:
  """RGB uint8 pixels of an image file.

  16-bit and 32-bit grey images are scaled by their range to 8 bits (PIL's
  own conversion would clip them to white); palette, grey and alpha images
  are converted to RGB.

  Raises:
    OSError, ValueError, SyntaxError: not a readable image.
    ImageTooLargeError: more than `max_pixels` pixels.
  """
  # PIL refuses images over twice its own MAX_IMAGE_PIXELS; the config's
  # limit replaces PIL's for this read (checked below, exactly).
  previous = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels * 2
  try:
    image = Image.open(path)
  except Image.DecompressionBombError as e:
    raise ImageTooLargeError(
        f'{e} (more than config.eval.max_image_pixels = {max_pixels:,}); '
        'shrink it, or raise that limit') from None
  finally:
    Image.MAX_IMAGE_PIXELS = previous
  with image:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
      raise ImageTooLargeError(
          f'{width}x{height} = {width * height:,} pixels, more than '
          f'config.eval.max_image_pixels = {max_pixels:,}; shrink it, or '
          'raise that limit')
    image.load()
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
      pixels = np.asarray(image, np.float64)
      top = 65535.0 if pixels.max() > 255 else 255.0
      grey = np.clip(np.round(pixels * (255.0 / top)), 0, 255)
      return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(image.convert('RGB'))


def output_names(files: list[epath.Path]) -> dict[epath.Path, str]:
  """{file: output name}: the stem, or stem_ext where two files share a stem
  (dup.jpg and dup.png -> dup_jpg, dup_png), so no output overwrites another."""
  stems: dict[str, int] = {}
  for path in files:
    stems[path.stem] = stems.get(path.stem, 0) + 1
  return {path: (path.stem if stems[path.stem] == 1 else
                 f'{path.stem}_{path.suffix.lstrip(".")}')
          for path in files}


def check_folders(images_dir: str, output_dir: str) -> list[epath.Path]:
  """The image files to segment; DatasetError before any model work when
  the input folder is missing or empty or the output cannot be written."""
  source = epath.Path(images_dir)
  if not source.is_dir():
    raise DatasetError(f'--images={images_dir} is not a folder of images.')
  files = sorted(p for p in source.iterdir() if p.is_file())
  if not files:
    raise DatasetError(f'--images={images_dir} holds no files.')
  out = epath.Path(output_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / '.write_test'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise DatasetError(
        f'Cannot write the predictions to {output_dir} ({e.strerror or e}): '
        'pass a writable --output=DIR.') from None
  return files


def predict_folder(config: ml_collections.ConfigDict, model: nnx.Module,
                   images_dir: str, output_dir: str) -> dict[str, Any]:
  """Segments every image file in `images_dir` into `output_dir`.

  Writes <name>_mask.png (palette PNG whose values are class ids),
  <name>_overlay.png, and predictions.json (class fractions per image).
  <name> is the file's stem, or stem_ext when two files share a stem. A
  file that cannot be read or segmented is named, skipped and counted.

  Raises:
    DatasetError: no image could be segmented (or the folders are unusable).
  """
  files = check_folders(images_dir, output_dir)
  out = epath.Path(output_dir)
  names = output_names(files)
  class_names = dataset_class_names(config)
  palette = dataset_spec(config.data).palette
  segment = make_segmenter(model, config)
  results, skipped = {}, {}
  progress = Progress('predict', len(files))
  for path in files:
    try:
      photo = read_photo(path, config.eval.max_image_pixels)
      classes, _ = segment(photo)
    except Exception as e:  # pylint: disable=broad-except
      # One bad file (not an image, a decompression bomb, a truncated
      # JPEG) must not cost the others their results.
      reason = (str(e) if isinstance(e, ImageTooLargeError)
                else f'not a readable image ({type(e).__name__}: {e})')
      print(f'\nSkipping {path}: {reason}.', file=sys.stderr, flush=True)
      skipped[str(path)] = reason
      progress.update()
      continue
    name = names[path]
    visualize.save_mask_png(classes, out / f'{name}_mask.png', palette)
    visualize.save_png(visualize.overlay(photo, classes, palette),
                       out / f'{name}_overlay.png')
    counts = np.bincount(classes.reshape(-1), minlength=len(class_names))
    results[path.name] = {
        name: round(float(c) / classes.size, 4)
        for name, c in zip(class_names, counts) if c
    }
    progress.update()
  progress.close()
  summary = {'images': len(results), 'skipped': sorted(skipped),
             'skip_reasons': skipped,
             'outputs': {p.name: names[p] for p in files
                         if p.name in results},
             'class_fractions': results}
  (out / 'predictions.json').write_text(json.dumps(summary, indent=2))
  if not results:
    raise DatasetError(
        f'None of the {len(files)} file(s) in {images_dir} could be '
        f'segmented (see the lines above; {out}/predictions.json lists '
        'them): give a folder of JPEG or PNG photos.')
  return summary
