"""Pictures: palette masks, overlays, result panels, confusion matrix.

Every function that colours class ids takes the dataset's palette
(`DatasetSpec.palette`, [256, 3] uint8, the ignore label's colour included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """[H, W] class ids -> [H, W, 3] uint8 colours of `palette`."""
  return np.asarray(palette, np.uint8)[np.asarray(mask, np.uint8)]


def display_colours(count: int) -> np.ndarray:
  """[count, 3] uint8 bright, well-separated colours for overlays (hues a
  golden angle apart, full value): unlike VOC's dark palette (a cat is
  64, 0, 0), they stand out from a photo."""
  hues = (np.arange(count) * 0.381966 + 0.02) % 1.0
  saturation = np.where(np.arange(count) % 2 == 0, 0.95, 0.7)
  value = np.where(np.arange(count) % 3 == 2, 0.85, 1.0)
  sector = np.floor(hues * 6).astype(int) % 6
  f = hues * 6 - np.floor(hues * 6)
  p = value * (1 - saturation)
  q = value * (1 - f * saturation)
  t = value * (1 - (1 - f) * saturation)
  table = np.stack([
      np.choose(sector, [value, q, p, p, t, value]),
      np.choose(sector, [t, value, value, q, p, p]),
      np.choose(sector, [p, p, t, value, value, q]),
  ], axis=-1)
  return np.round(table * 255).astype(np.uint8)


def shown_classes(class_names: Sequence[str]) -> np.ndarray:
  """[256] bool: the class ids an overlay colours (not 'background', not
  the ignore label or ids beyond the classes)."""
  shown = np.zeros(256, bool)
  shown[:len(class_names)] = [n.lower() != 'background' for n in class_names]
  return shown


def class_outlines(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
  """[H, W] bool: pixels within `thickness` of a change of class."""
  mask = np.asarray(mask)
  edge = np.zeros(mask.shape, bool)
  horizontal = mask[:, 1:] != mask[:, :-1]
  vertical = mask[1:] != mask[:-1]
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  edge[1:] |= vertical
  edge[:-1] |= vertical
  for _ in range(max(0, thickness - 1)):
    grown = edge.copy()
    grown[1:] |= edge[:-1]
    grown[:-1] |= edge[1:]
    grown[:, 1:] |= edge[:, :-1]
    grown[:, :-1] |= edge[:, 1:]
    edge = grown
  return edge


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray,
            alpha: float = 0.5, shown: np.ndarray | None = None,
            outline: int = 0) -> np.ndarray:
  """The image with each shown class's colour blended over its pixels
  (`alpha`) and, with `outline` > 0, its outline drawn opaque that many
  pixels wide. Integer arithmetic in bands of rows, so that a large photo
  costs no float copy of itself.

  Args:
    image: [H, W, 3] uint8.
    mask: [H, W] class ids.
    colours: [>= max id + 1, 3] uint8 colour per class id (a palette).
    shown: [256] bool, the ids to colour (default: every id but 0).
  """
  image = np.asarray(image, np.uint8)
  mask = np.asarray(mask, np.uint8)
  table = np.zeros((256, 3), np.uint16)
  table[:len(colours)] = np.asarray(colours, np.uint16)[:256]
  if shown is None:
    shown = np.arange(256) > 0
  weight = int(round(alpha * 256))
  edges = class_outlines(mask, outline) if outline > 0 else None
  out = image.copy()
  for top in range(0, mask.shape[0], 512):
    rows = slice(top, top + 512)
    ids = mask[rows]
    blended = ((image[rows].astype(np.uint16) * (256 - weight) +
                table[ids] * weight) >> 8).astype(np.uint8)
    on = shown[ids]
    out[rows][on] = blended[on]
    if edges is not None:
      line = edges[rows] & on
      out[rows][line] = table[ids][line].astype(np.uint8)
  return out


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def legend_entries(mask: np.ndarray, class_names: Sequence[str]
                   ) -> list[tuple[int, str, float]]:
  """(class id, name, share of the image) of each class present, largest
  share first."""
  counts = np.bincount(np.asarray(mask, np.uint8).reshape(-1), minlength=256)
  total = max(1, int(counts.sum()))
  entries = []
  for class_id in np.argsort(-counts, kind='stable'):
    if counts[class_id] == 0:
      break
    name = (class_names[class_id] if class_id < len(class_names)
            else 'ignore')
    entries.append((int(class_id), name, counts[class_id] / total))
  return entries


def overlay_with_legend(image: np.ndarray, mask: np.ndarray,
                        class_names: Sequence[str]) -> np.ndarray:
  """A readable overlay: bright class colours blended over the photo with
  their outlines, and beside it a legend of the classes present with their
  share of the image ([H', W + legend, 3] uint8; H' >= H when the legend
  needs more rows than the photo has)."""
  height, width = np.asarray(mask).shape
  colours = display_colours(len(class_names))
  shown = shown_classes(class_names)
  thickness = max(1, round(min(height, width) / 400))
  picture = overlay(image, mask, colours, alpha=0.5, shown=shown,
                    outline=thickness)
  entries = legend_entries(mask, class_names)
  font_size = int(np.clip(height / 36, 12, 64))
  row = int(font_size * 1.5)
  font = _font(font_size)
  texts = [f'{name}  {share * 100:.1f}%' for _, name, share in entries]
  text_width = max(int(font.getbbox(t)[2]) for t in texts)
  panel_width = row + text_width + 2 * font_size
  panel_height = max(height, row * len(entries) + font_size)
  panel = Image.new('RGB', (panel_width, panel_height), (255, 255, 255))
  draw = ImageDraw.Draw(panel)
  for k, ((class_id, _, _), text) in enumerate(zip(entries, texts)):
    top = font_size // 2 + k * row
    swatch = (tuple(int(v) for v in colours[class_id]) if shown[class_id]
              else (255, 255, 255))
    draw.rectangle([font_size // 2, top, font_size // 2 + font_size,
                    top + font_size], fill=swatch, outline=(0, 0, 0))
    draw.text((font_size * 2, top), text, fill=(0, 0, 0), font=font)
  out = np.full((panel_height, width + panel_width, 3), 255, np.uint8)
  out[:height, :width] = picture
  out[:, width:] = np.asarray(panel)
  return out


def result_panel(image: np.ndarray, truth: np.ndarray | None,
                 prediction: np.ndarray, *, palette: np.ndarray,
                 gap: int = 4) -> np.ndarray:
  """image | ground truth | prediction | overlay, side by side (uint8)."""
  parts = [np.asarray(image, np.uint8)]
  if truth is not None:
    parts.append(colorize(truth, palette))
  parts += [colorize(prediction, palette),
            overlay(image, prediction, palette, outline=1)]
  height = parts[0].shape[0]
  spacer = np.full((height, gap, 3), 255, np.uint8)
  row = []
  for part in parts:
    row += [part, spacer]
  return np.concatenate(row[:-1], axis=1)


def save_png(array: np.ndarray, path) -> None:
  Image.fromarray(np.asarray(array, np.uint8)).save(str(path))


def save_mask_png(mask: np.ndarray, path, palette: np.ndarray) -> None:
  """A palette PNG whose pixel values are the class ids (VOC's format),
  shown in `palette`'s colours."""
  image = Image.fromarray(np.asarray(mask, np.uint8), mode='P')
  image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
  image.save(str(path))


def legend_patches(class_ids, class_names: Sequence[str],
                   palette: np.ndarray):
  """matplotlib legend handles: one palette-coloured patch per class id."""
  return [Patch(color=np.asarray(palette)[int(i)] / 255.0,
                label=class_names[int(i)] if int(i) < len(class_names)
                else 'ignore')
          for i in class_ids]


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]):
  """A matplotlib Figure of the row-normalised confusion matrix.

  Built without pyplot, so it needs no display backend and leaves the
  notebook's backend alone (`display(fig)` shows it, `fig.savefig` saves).
  """
  confusion = np.asarray(confusion, np.float64)
  rows = confusion.sum(axis=1, keepdims=True)
  normalised = np.divide(confusion, rows, out=np.zeros_like(confusion),
                         where=rows > 0)
  n = len(class_names)
  # 0.38 in per class up to 20 in (2000 px at 100 dpi): ADE20K's 150
  # classes made a 59-inch figure that took 8 s to draw, every eval.
  size = min(max(4.0, 0.38 * n + 2), 20.0)
  tick_points = min(10.0, 0.8 * 72 * (size - 2) / n)
  fig = Figure(figsize=(size, size))
  ax = fig.subplots()
  ax.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(n), class_names, rotation=90, fontsize=tick_points)
  ax.set_yticks(range(n), class_names, fontsize=tick_points)
  ax.set_xlabel('prediction')
  ax.set_ylabel('ground truth')
  ax.set_title('confusion (rows normalised)')
  if n <= 12:
    for i in range(n):
      for j in range(n):
        if normalised[i, j] >= 0.005:
          ax.text(j, i, f'{normalised[i, j]:.2f}', ha='center', va='center',
                  fontsize=8,
                  color='white' if normalised[i, j] > 0.5 else 'black')
  fig.tight_layout()
  return fig
