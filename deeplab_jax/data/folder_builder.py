"""Your own data: a folder of images and masks as a TFDS dataset.

Layout (`config.data.folder = DIR`):

    DIR/images/<stem>.jpg|.jpeg|.png     the photos
    DIR/masks/<stem>.png                 one mask per photo, same size
    DIR/classes.txt                      optional: line i names class i
    DIR/classes.csv                      optional: name,r,g,b per class
    DIR/splits/train.txt, val.txt        optional: stems, one per line

Images and masks are read as a viewer shows them: a phone photo's EXIF
orientation is applied, and a mask must match the photo as displayed (a
mask that matches it only as stored is named, with the orientation).

Masks (`config.data.mask_format`):
  * `ids`: each pixel value is a class id (PIL mode 'P' or 'L'); 255 is the
    ignore label (never trained on or scored).
  * `rgb`: colour masks, mapped through the colours of `classes.csv`; a row
    named `ignore` maps its colour to the ignore label (VOC's cream void
    colour, 224,224,192, for instance). Any other colour is an error.
  * `binary`: 0 is background (class 0), every other value is foreground
    (class 1); 255 is foreground here, not ignore.

Splits: `splits/train.txt` and `splits/val.txt` become the `train` and
`validation` splits (the names every dataset uses); without them a stable
hold-out of `config.data.val_fraction` of the stems (by a hash of each stem,
so adding files never moves an old one between splits) is `validation`.

The dataset is prepared once, like VOC, into array_record files under
`config.data.data_dir`; its TFDS config name carries a fingerprint of the
file list (names, sizes, modification times) and of the options, so a
changed folder is prepared again (and said so), never read stale.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from deeplab_jax.data import images
from deeplab_jax.data.labels import IGNORE_LABEL, palette_with
from deeplab_jax.data.features import segmentation_features
from deeplab_jax.errors import DatasetError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
MASK_FORMATS = ('ids', 'rgb', 'binary')
BINARY_CLASS_NAMES = ('background', 'foreground')


@dataclasses.dataclass(frozen=True)
class FolderClasses:
  """Class names, their colours ([N, 3] uint8 or None) and the colour that
  means ignore (or None)."""
  names: tuple[str, ...]
  colours: np.ndarray | None = dataclasses.field(default=None, compare=False)
  ignore_colour: tuple[int, int, int] | None = None

  def palette(self) -> np.ndarray:
    """[256, 3] uint8: the table's colours first, generated ones after."""
    palette = (palette_with(self.colours) if self.colours is not None
               else palette_with(np.zeros((0, 3), np.uint8)))
    if self.ignore_colour is not None:
      palette[IGNORE_LABEL] = self.ignore_colour
    return palette


def _folder(folder: epath.PathLike | None) -> epath.Path:
  if not folder:
    raise DatasetError('config.data.folder is not set: pass '
                       '--config.data.folder=DIR (DIR/images/ and '
                       'DIR/masks/; see configs/folder.py).')
  path = epath.Path(os.path.expanduser(os.fspath(folder)))
  if not path.is_dir():
    raise DatasetError(f'The dataset folder {folder} does not exist: pass '
                       '--config.data.folder=DIR.')
  return path


def read_classes(folder: epath.PathLike, mask_format: str
                 ) -> FolderClasses | None:
  """The classes of DIR/classes.csv or DIR/classes.txt (None: neither).

  Raises:
    DatasetError: a malformed row, a duplicate colour or name, or `rgb`
      masks without classes.csv.
  """
  path = _folder(folder)
  table, names_file = path / 'classes.csv', path / 'classes.txt'
  if table.exists():
    names, colours, ignore = [], [], None
    seen: dict[tuple[int, ...], str] = {}
    rows = list(csv.reader(io.StringIO(table.read_text())))
    for number, row in enumerate(rows, 1):
      row = [cell.strip() for cell in row]
      if not row or not any(row) or row[0].startswith('#'):
        continue
      if number == 1 and row[0].lower() == 'name':
        continue  # A header.
      try:
        name, r, g, b = row
        colour = tuple(int(v) for v in (r, g, b))
        if not all(0 <= v <= 255 for v in colour):
          raise ValueError
      except ValueError:
        raise DatasetError(
            f'{table} line {number} is {",".join(row)!r}: each line must be '
            'name,r,g,b with r, g, b in 0..255.') from None
      if colour in seen:
        raise DatasetError(
            f'{table}: the colour {colour} is given to both {seen[colour]!r} '
            f'and {name!r} (line {number}); each class needs its own colour.')
      seen[colour] = name
      if name.lower() == 'ignore':
        ignore = colour
        continue
      if name in names:
        raise DatasetError(f'{table}: the class {name!r} is listed twice.')
      names.append(name)
      colours.append(colour)
    if not names:
      raise DatasetError(f'{table} lists no class.')
    return FolderClasses(tuple(names), np.asarray(colours, np.uint8), ignore)
  if mask_format == 'rgb':
    raise DatasetError(
        f'config.data.mask_format = rgb needs {table} (name,r,g,b per class, '
        'line i for class i; a row named ignore for the ignore colour).')
  if names_file.exists():
    names = [line.strip() for line in names_file.read_text().splitlines()
             if line.strip()]
    if not names:
      raise DatasetError(f'{names_file} lists no class.')
    if len(set(names)) != len(names):
      raise DatasetError(f'{names_file} lists a class twice.')
    return FolderClasses(tuple(names))
  if mask_format == 'binary':
    return FolderClasses(BINARY_CLASS_NAMES)
  return None


@dataclasses.dataclass(frozen=True)
class FolderFiles:
  """The (stem, image, mask) triples of a folder, sorted by stem."""
  pairs: tuple[tuple[str, epath.Path, epath.Path], ...]

  def fingerprint(self) -> str:
    digest = hashlib.sha256()
    for stem, image, mask in self.pairs:
      for path in (image, mask):
        stat = os.stat(path)
        digest.update(f'{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n'
                      .encode())
    return digest.hexdigest()


def list_files(folder: epath.PathLike) -> FolderFiles:
  """Every image with its mask.

  Raises:
    DatasetError: no images/ or masks/ folder, no image, an image without
      a mask or a mask without an image, two images with one stem.
  """
  path = _folder(folder)
  images_dir, masks_dir = path / 'images', path / 'masks'
  for needed in (images_dir, masks_dir):
    if not needed.is_dir():
      raise DatasetError(
          f'{needed} does not exist: a folder dataset holds images/ (photos '
          'as .jpg, .jpeg or .png) and masks/ (<same name>.png).')
  images: dict[str, epath.Path] = {}
  for image in sorted(images_dir.iterdir()):
    if image.suffix.lower() not in IMAGE_SUFFIXES or image.name.startswith(
        '.'):
      continue
    if image.stem in images:
      raise DatasetError(
          f'{images[image.stem].name} and {image.name} in {images_dir} share '
          'the name; masks are matched by name: rename one.')
    images[image.stem] = image
  masks = {m.stem: m for m in masks_dir.iterdir()
           if m.suffix.lower() == '.png' and not m.name.startswith('.')}
  if not images:
    raise DatasetError(f'{images_dir} holds no image (.jpg, .jpeg, .png).')
  without_mask = sorted(set(images) - set(masks))
  without_image = sorted(set(masks) - set(images))
  if without_mask or without_image:
    lines = []
    if without_mask:
      lines.append(f'{len(without_mask)} image(s) without a mask in '
                   f'{masks_dir}: ' + ', '.join(
                       images[s].name for s in without_mask[:5]) +
                   (' ...' if len(without_mask) > 5 else ''))
    if without_image:
      lines.append(f'{len(without_image)} mask(s) without an image in '
                   f'{images_dir}: ' + ', '.join(
                       masks[s].name for s in without_image[:5]) +
                   (' ...' if len(without_image) > 5 else ''))
    raise DatasetError('; '.join(lines) + '. Every image needs '
                       'masks/<its name>.png and every mask an image: add '
                       'or remove the files named.')
  return FolderFiles(tuple((stem, images[stem], masks[stem])
                           for stem in sorted(images)))


def listing_stamp(folder: epath.PathLike | None) -> tuple[int, ...]:
  """Modification times (ns) of the folder's parts: they change when files
  are added, removed or renamed, or a list is edited (cheap to read)."""
  if not folder:
    return ()
  root = epath.Path(os.path.expanduser(os.fspath(folder)))
  parts = ('images', 'masks', 'classes.txt', 'classes.csv', 'splits',
           'splits/train.txt', 'splits/val.txt')
  return tuple(os.stat(root / p).st_mtime_ns if (root / p).exists() else 0
               for p in parts)


def split_stems(folder: epath.PathLike, stems: Sequence[str],
                val_fraction: float) -> dict[str, list[str]]:
  """{'train': stems, 'validation': stems}: from DIR/splits/ when it has
  train.txt and val.txt, otherwise a hold-out by a hash of each stem."""
  splits = _folder(folder) / 'splits'
  if (splits / 'train.txt').exists() and (splits / 'val.txt').exists():
    known = set(stems)
    out = {}
    for split, name in (('train', 'train.txt'), ('validation', 'val.txt')):
      listed = [line.strip() for line in (splits / name).read_text()
                .splitlines() if line.strip()]
      listed = [os.path.splitext(s)[0] if s.lower().endswith(
          IMAGE_SUFFIXES) else s for s in listed]
      unknown = [s for s in listed if s not in known]
      if unknown:
        raise DatasetError(
            f'{splits / name} lists {len(unknown)} name(s) with no image and '
            f'mask: {", ".join(unknown[:5])}. Fix the list or add the files.')
      out[split] = listed
    return out

  def position(stem: str) -> float:  # Uniform in [0, 1), fixed per stem.
    value = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], 'big')
    return value / 2.0**64

  if len(stems) < 2:
    raise DatasetError(
        f'{_folder(folder)} holds {len(stems)} image(s): a train and a '
        'validation split need at least 2.')
  ranked = sorted(stems, key=position)
  held = {s for s in stems if position(s) < val_fraction}
  # Tiny folders: at least one image on each side (the lowest-ranked held
  # out, the highest kept), still chosen by the hash alone.
  held = (held or {ranked[0]}) - ({ranked[-1]} if len(held) == len(stems)
                                   else set())
  return {'train': [s for s in stems if s not in held],
          'validation': [s for s in stems if s in held]}


def read_mask_ids(path: epath.Path, mask_format: str,
                  classes: FolderClasses | None) -> np.ndarray:
  """Class ids ([H, W] uint8, IGNORE_LABEL = ignore) of one mask file.

  Raises:
    DatasetError: a colour mask with a colour not in classes.csv, or an
      `ids` mask that is not a palette or grey-level image.
    OSError, ValueError: the file cannot be read (skipped by the builder).
  """
  image, _ = images.open_image(os.fspath(path))  # As displayed.
  with image:
    if mask_format == 'rgb':
      rgb = np.asarray(image.convert('RGB'), np.uint8)
      packed = (rgb[..., 0].astype(np.int32) << 16 |
                rgb[..., 1].astype(np.int32) << 8 | rgb[..., 2])
      table = {(int(r) << 16 | int(g) << 8 | int(b)): i
               for i, (r, g, b) in enumerate(classes.colours)}
      if classes.ignore_colour is not None:
        r, g, b = classes.ignore_colour
        table[r << 16 | g << 8 | b] = IGNORE_LABEL
      values, inverse, counts = np.unique(packed, return_inverse=True,
                                          return_counts=True)
      unknown = [(int(v), int(c)) for v, c in zip(values, counts)
                 if int(v) not in table]
      if unknown:
        shown = ', '.join(f'({v >> 16}, {v >> 8 & 255}, {v & 255}) on {c} '
                          'pixels' for v, c in unknown[:3])
        raise DatasetError(
            f'{path} holds colour(s) not in classes.csv: {shown}. Add them '
            '(a row named ignore for pixels not to score), or check that '
            'the mask was not smoothed (saved as JPEG or resized with '
            'interpolation).')
      lookup = np.asarray([table[int(v)] for v in values], np.uint8)
      return lookup[inverse.reshape(packed.shape)]
    if image.mode not in ('P', 'L', '1'):
      raise DatasetError(
          f'{path} has PIL mode {image.mode!r}: config.data.mask_format = '
          f'{mask_format} reads pixel values (palette or grey-level PNGs). '
          'For colour masks set --config.data.mask_format=rgb with a '
          'classes.csv.')
    values = np.asarray(image, dtype=np.uint8)
  if mask_format == 'binary':
    return (values != 0).astype(np.uint8)
  return values


def check_ids(ids: np.ndarray, num_classes: int, path: epath.Path) -> None:
  stray = sorted(set(np.unique(ids).tolist()) - set(range(num_classes)) -
                 {IGNORE_LABEL})
  if stray:
    raise DatasetError(
        f'{path} holds class id(s) {stray[:10]} but the dataset has '
        f'{num_classes} classes (0..{num_classes - 1}; {IGNORE_LABEL} = '
        'ignore): list every class in classes.txt or classes.csv, or fix '
        'the mask.')


def size_mismatch(image_path: epath.Path, mask_path: epath.Path,
                  image_bytes: bytes, mask_shape: tuple[int, int],
                  shown: tuple[int, int], turn: int) -> str:
  """The message for a mask whose size is not its image's, saying which
  orientation it matches when EXIF orientation explains it."""
  mask_h, mask_w = mask_shape
  _, mask_stored, mask_turn = images.displayed_size(mask_path.read_bytes())
  _, stored, _ = images.displayed_size(image_bytes)
  if turn in images.TRANSPOSING and (mask_w, mask_h) == stored:
    return (f'{mask_path} is {mask_w}x{mask_h}, the size of {image_path.name} '
            f'as stored, but that photo carries EXIF orientation {turn} '
            f'({images.ORIENTATION_NAMES[turn]}): viewers, and this project, '
            f'show it as {shown[0]}x{shown[1]}. Draw the mask on the photo as '
            'displayed (rotate it to match), or save the photo upright '
            'without the tag (PIL: ImageOps.exif_transpose(image).save(...)).')
  if mask_turn in images.TRANSPOSING and mask_stored == shown:
    return (f'{mask_path} carries EXIF orientation {mask_turn} '
            f'({images.ORIENTATION_NAMES[mask_turn]}), which shows it as '
            f'{mask_w}x{mask_h}; as stored it is {mask_stored[0]}x'
            f'{mask_stored[1]}, the size of {image_path.name}: save the mask '
            'without the orientation tag.')
  return (f'{mask_path} is {mask_w}x{mask_h} but its image {image_path.name} '
          f'is {shown[0]}x{shown[1]}: a mask must have its image\'s size '
          '(resize it with nearest-neighbour sampling, or fix the pair).')


def scan_class_ids(files: FolderFiles, mask_format: str) -> int:
  """The number of classes of `ids` masks without a classes file: the
  largest id found (other than the ignore label) plus one."""
  largest = 0
  for _, _, mask in files.pairs:
    try:
      ids = read_mask_ids(mask, mask_format, None)
    except (OSError, ValueError, SyntaxError):
      continue  # The build skips and counts it.
    found = np.unique(ids)
    found = found[found != IGNORE_LABEL]
    if found.size:
      largest = max(largest, int(found.max()))
  return largest + 1


def _slug(folder: epath.Path) -> str:
  return re.sub(r'[^a-z0-9]+', '_', folder.name.lower()).strip('_') or 'data'


class FolderConfig(tfds.core.BuilderConfig):
  """One folder with its options; the name carries their fingerprint."""

  def __init__(self, *, folder: str, mask_format: str, val_fraction: float,
               class_names: Sequence[str], fingerprint: str):
    self.folder = folder
    self.mask_format = mask_format
    self.val_fraction = val_fraction
    self.class_names = tuple(class_names)
    digest = hashlib.sha256(
        f'{fingerprint}|{mask_format}|{val_fraction}|{self.class_names}|'
        f'{_splits_text(folder)}|{_classes_text(folder)}'.encode()
    ).hexdigest()[:12]
    super().__init__(name=f'{_slug(epath.Path(folder))}_{digest}',
                     version=tfds.core.Version('1.1.0'),
                     description=f'Folder dataset {folder}.')


def _splits_text(folder: str) -> str:
  splits = epath.Path(folder) / 'splits'
  return ''.join((splits / n).read_text() if (splits / n).exists() else ''
                 for n in ('train.txt', 'val.txt'))


def _classes_text(folder: str) -> str:
  return ''.join((epath.Path(folder) / n).read_text()
                 if (epath.Path(folder) / n).exists() else ''
                 for n in ('classes.csv', 'classes.txt'))


class FolderSegmentation(tfds.core.GeneratorBasedBuilder):
  """Images and masks of a folder (see the module docstring)."""

  # 1.1.0: images are read as displayed (EXIF orientation), so folders
  # prepared before are prepared again.
  VERSION = tfds.core.Version('1.1.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='A folder of images and segmentation masks.',
        features=segmentation_features(None),
        supervised_keys=('image', 'segmentation_mask'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    files = list_files(c.folder)
    by_stem = {stem: (image, mask) for stem, image, mask in files.pairs}
    stems = split_stems(c.folder, list(by_stem), c.val_fraction)
    classes = read_classes(c.folder, c.mask_format)
    return {split: self._generate_examples(
        [(s, *by_stem[s]) for s in chosen], classes, split)
            for split, chosen in stems.items()}

  def _generate_examples(self, triples, classes, split
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    c = self.builder_config
    skipped: list[str] = []
    for stem, image_path, mask_path in triples:
      try:
        image_bytes = image_path.read_bytes()
        # As displayed: the EXIF orientation applied (decoding applies it
        # again to the stored bytes when they keep it).
        image, turn = images.open_image(image_bytes)
        with image:
          width, height = image.size
          if image.mode != 'RGB':
            buffer = io.BytesIO()
            Image.fromarray(images.to_rgb(image)).save(buffer, format='PNG')
            image_bytes = buffer.getvalue()
      except (OSError, SyntaxError, ValueError) as e:
        skipped.append(f'{image_path}: unreadable image ({e})')
        logging.warning('Skipping %s', skipped[-1])
        continue
      try:
        ids = read_mask_ids(mask_path, c.mask_format, classes)
      except (OSError, SyntaxError, ValueError) as e:
        skipped.append(f'{mask_path}: unreadable mask ({e})')
        logging.warning('Skipping %s', skipped[-1])
        continue
      if ids.shape != (height, width):
        raise DatasetError(size_mismatch(image_path, mask_path, image_bytes,
                                         ids.shape, (width, height), turn))
      check_ids(ids, len(c.class_names), mask_path)
      buffer = io.BytesIO()
      Image.fromarray(ids, mode='L').save(buffer, format='PNG')
      yield stem, {'image': io.BytesIO(image_bytes),
                   'segmentation_mask': io.BytesIO(buffer.getvalue()),
                   'file_name': image_path.name}
    if skipped:
      logging.warning('%s/%s: skipped %d of %d examples:\n  %s', c.folder,
                      split, len(skipped), len(triples), '\n  '.join(skipped))
    self.info.metadata[f'skipped_{split}'] = skipped
