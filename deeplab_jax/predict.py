"""Predict: photos in, class maps and overlays out, at each photo's own size.

`--images` is a folder (its files; with `--recursive` its whole tree,
mirrored in `--output`), one file, or a glob. Every image is read as a
viewer shows it (EXIF orientation applied) and segmented under
`config.eval`'s inference policy (deeplab_jax/inference/: scaled by
`eval.input_scale`, whole or in tiles), so a 6000x4000 photo is segmented
at full resolution in bounded memory. A file that is not an image is named
and skipped; the rest go on.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from deeplab_jax import visualize
from deeplab_jax.data import images as image_io
from deeplab_jax.data.datasets import class_names as dataset_class_names
from deeplab_jax.data.datasets import dataset_spec
from deeplab_jax.errors import ConfigError, DatasetError
from deeplab_jax.inference import programs
from deeplab_jax.inference.segmenter import Segmentation, Segmenter
from deeplab_jax.progress import Progress

# Overlays of larger images are written as JPEG: a photo's RGB PNG of this
# size takes hundreds of MB and most of a minute to encode.
PNG_OVERLAY_MAX_PIXELS = 30_000_000
_GLOB_CHARACTERS = frozenset('*?[')


def image_suffixes() -> frozenset[str]:
  """File suffixes PIL reads (.jpg, .png, .tif, .webp, ...)."""
  return frozenset(s.lower() for s, f in Image.registered_extensions().items()
                   if f in Image.OPEN)


def segment_function(model: nnx.Module | None,
                     config: ml_collections.ConfigDict
                     ) -> Callable[..., Segmentation]:
  """(uint8 [H, W, 3] RGB photo, name=..., with_confidence=...) ->
  its `Segmentation` under `config.eval`'s policy.

  `model` None: `config.eval.runtime` runs `config.eval.model_file`, an
  exported file, instead (deeplab_jax/inference/runtimes.py).
  """
  if model is None:
    segmenter, weights = Segmenter(config), None
  else:
    # Folded once: BatchNorm's arithmetic is not in the per-photo program.
    graphdef, state = nnx.split(programs.folded(model))
    segmenter = Segmenter(config, graphdef)
    weights = segmenter.bind(state)
  return functools.partial(segmenter.segment, weights)


def make_segmenter(model: nnx.Module | None,
                   config: ml_collections.ConfigDict):
  """(uint8 [H, W, 3] RGB photo) -> ([H, W] uint8 class ids, [H, W] float32
  confidence = the winning class's probability), for notebooks."""
  segment = segment_function(model, config)

  def classes_and_confidence(photo: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    result = segment(photo, with_confidence=True)
    return result.classes, result.confidence

  return classes_and_confidence


def read_photo(path: pathlib.PathLike, max_pixels: int | None = None
               ) -> np.ndarray:
  """RGB uint8 pixels of an image file, as displayed
  (`data.images.read_rgb`)."""
  return image_io.read_rgb(os.fspath(path), max_pixels)


ImageTooLargeError = image_io.ImageTooLargeError


def output_names(files: list[pathlib.Path]) -> dict[pathlib.Path, str]:
  """{file: output name}: the stem, or stem_ext where two files of one
  folder share a stem (dup.jpg and dup.png -> dup_jpg, dup_png), so no
  output overwrites another."""
  stems: dict[tuple[str, str], int] = {}
  for path in files:
    key = (str(path.parent), path.stem)
    stems[key] = stems.get(key, 0) + 1
  return {path: (path.stem if stems[(str(path.parent), path.stem)] == 1 else
                 f'{path.stem}_{path.suffix.lstrip(".")}')
          for path in files}


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  path, folder = (os.path.realpath(p) for p in (path, folder))
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_inputs(images: str, output: str, recursive: bool = False
                ) -> tuple[pathlib.Path, list[pathlib.Path], list[pathlib.Path]]:
  """(root, the files to segment, images left in subfolders) for
  `--images` (a folder, a file or a glob).

  Raises:
    DatasetError: nothing there, or `--output` inside the folder read.
  """
  out = pathlib.Path(os.path.expanduser(output))
  if _GLOB_CHARACTERS & set(images):
    files = sorted(pathlib.Path(p) for p in glob.glob(
        os.path.expanduser(images), recursive=True) if os.path.isfile(p))
    if not files:
      raise DatasetError(f'--images={images} matches no file.')
    # The folder the pattern starts from: outputs mirror the tree below.
    parts = pathlib.Path(os.path.expanduser(images)).parts
    fixed = next(i for i, part in enumerate(parts)
                 if _GLOB_CHARACTERS & set(part))
    root = pathlib.Path(*parts[:fixed]) if fixed else pathlib.Path('.')
    matched = [f for f in files if _inside(f, out)]
    if matched:
      raise DatasetError(
          f'--output={output} holds {matched[0].name}, which --images='
          f'{images} matches: a second run would segment its own masks. '
          'Pass an --output outside what --images matches.')
    return root, files, []
  source = pathlib.Path(os.path.expanduser(images))
  if source.is_file():
    return source.parent, [source], []
  if not source.is_dir():
    raise DatasetError(f'--images={images} is not a folder, a file or a '
                       'glob of images.')
  if _inside(out, source):
    raise DatasetError(
        f'--output={output} is inside --images={images}: a second run would '
        'segment its own masks. Pass an --output outside that folder.')
  suffixes = image_suffixes()
  if recursive:
    files = sorted(p for p in source.rglob('*') if p.is_file() and
                   p.suffix.lower() in suffixes and
                   not any(part.startswith('.') for part in
                           p.relative_to(source).parts))
    nested: list[pathlib.Path] = []
  else:
    files = sorted(p for p in source.iterdir() if p.is_file())
    nested = sorted(p for p in source.rglob('*') if p.is_file() and
                    p.parent != source and p.suffix.lower() in suffixes)
  if not files:
    raise DatasetError(
        f'--images={images} holds no files' +
        (f' directly, but {len(nested)} image(s) in subfolders: add '
         '--recursive' if nested else '') + '.')
  return source, files, nested


def check_folders(images_dir: str, output_dir: str,
                  recursive: bool = False) -> list[pathlib.Path]:
  """The image files to segment; DatasetError before any model work when
  the input is missing or empty, or the output cannot be written."""
  _, files, _ = list_inputs(images_dir, output_dir, recursive)
  out = pathlib.Path(output_dir)
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


def _say_nested(nested: list[pathlib.Path], root: pathlib.Path) -> None:
  if not nested:
    return
  folders = sorted({str(p.parent.relative_to(root)) for p in nested})
  print(f'Not segmenting {len(nested)} image(s) in {len(folders)} '
        f'subfolder(s) of {root} ({", ".join(folders[:3])}'
        f'{", ..." if len(folders) > 3 else ""}): add --recursive to include '
        'them.', flush=True)


def write_results(out_dir: pathlib.Path, name: str, photo: np.ndarray,
                  classes: np.ndarray, class_names, palette) -> dict[str, str]:
  """<name>_mask.png (palette PNG of class ids) and the overlay with its
  legend; returns {'mask': file, 'overlay': file}."""
  out_dir.mkdir(parents=True, exist_ok=True)
  mask = out_dir / f'{name}_mask.png'
  visualize.save_mask_png(classes, mask, palette)
  picture = visualize.overlay_with_legend(photo, classes, class_names)
  if classes.size > PNG_OVERLAY_MAX_PIXELS:
    overlay = out_dir / f'{name}_overlay.jpg'
    Image.fromarray(picture).save(str(overlay), quality=90)
  else:
    overlay = out_dir / f'{name}_overlay.png'
    visualize.save_png(picture, overlay)
  return {'mask': mask.name, 'overlay': overlay.name}


def predict_folder(config: ml_collections.ConfigDict, model: nnx.Module,
                   images_dir: str, output_dir: str, *,
                   recursive: bool = False) -> dict[str, Any]:
  """Segments every image of `images_dir` (a folder, a file or a glob)
  into `output_dir`.

  Writes <name>_mask.png (palette PNG whose values are class ids),
  <name>_overlay.png (or .jpg beyond `PNG_OVERLAY_MAX_PIXELS`: the class
  colours blended over the photo, with outlines and a legend of the
  classes present) and predictions.json (per image: its size, how it was
  run, class fractions). <name> is the file's stem, or stem_ext when two
  files share a stem; `recursive` mirrors the folder tree. A file that
  cannot be read or segmented is named, skipped and counted.

  Raises:
    DatasetError: no image could be segmented (or the folders are unusable).
  """
  root, files, nested = list_inputs(images_dir, output_dir, recursive)
  check_folders(images_dir, output_dir, recursive)
  _say_nested(nested, root)
  out = pathlib.Path(output_dir)
  names = output_names(files)
  class_names = dataset_class_names(config)
  palette = dataset_spec(config.data).palette
  segment = segment_function(model, config)
  results, skipped, outputs, details = {}, {}, {}, {}
  jpeg_overlays = []
  progress = Progress('predict', len(files))
  for path in files:
    relative = str(path.relative_to(root))
    try:
      photo = read_photo(path, config.eval.max_image_pixels)
      result = segment(photo, name=relative)
    except Exception as e:  # pylint: disable=broad-except
      # One bad file (not an image, a decompression bomb, a truncated
      # JPEG) must not cost the others their results; a mistake of the
      # config (whole mode for an image too large) stops the run.
      if isinstance(e, (DatasetError, ConfigError)):
        raise
      reason = (str(e) if isinstance(e, image_io.ImageTooLargeError)
                else f'not a readable image ({type(e).__name__}: {e})')
      print(f'\nSkipping {path}: {reason}.', file=sys.stderr, flush=True)
      skipped[str(path)] = reason
      progress.update()
      continue
    classes = result.classes
    written = write_results(out / path.relative_to(root).parent, names[path],
                            photo, classes, class_names, palette)
    if written['overlay'].endswith('.jpg'):
      jpeg_overlays.append(relative)
    counts = np.bincount(classes.reshape(-1), minlength=len(class_names))
    results[relative] = {
        name: round(float(c) / classes.size, 4)
        for name, c in zip(class_names, counts) if c
    }
    folder = os.path.dirname(relative)
    outputs[relative] = os.path.join(folder, names[path])
    details[relative] = {
        'mask': os.path.join(folder, written['mask']),
        'overlay': os.path.join(folder, written['overlay']),
        'size': [int(photo.shape[1]), int(photo.shape[0])],
        'mode': result.mode, 'input_scale': round(result.scale, 6),
        'tiles': result.tiles, 'seconds': round(result.seconds, 3)}
    progress.update()
  progress.close()
  if jpeg_overlays:
    print(f'{len(jpeg_overlays)} image(s) over '
          f'{PNG_OVERLAY_MAX_PIXELS / 1e6:.0f} MP have their overlay written '
          'as JPEG (quality 90; the mask stays a full-size palette PNG): '
          f'{", ".join(jpeg_overlays[:3])}'
          f'{", ..." if len(jpeg_overlays) > 3 else ""}.', flush=True)
  summary = {'images': len(results), 'skipped': sorted(skipped),
             'skip_reasons': skipped, 'outputs': outputs, 'files': details,
             'not_recursed': [str(p.relative_to(root)) for p in nested],
             'class_fractions': results}
  (out / 'predictions.json').write_text(json.dumps(summary, indent=2))
  if not results:
    raise DatasetError(
        f'None of the {len(files)} file(s) in {images_dir} could be '
        f'segmented (see the lines above; {out}/predictions.json lists '
        'them): give JPEG, PNG or other image files.')
  return summary
