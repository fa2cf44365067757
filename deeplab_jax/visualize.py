"""Pictures: palette masks, overlays, result panels, confusion matrix.

Every function that colours class ids takes the dataset's palette
(`DatasetSpec.palette`, [256, 3] uint8, the ignore label's colour included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """[H, W] class ids -> [H, W, 3] uint8 colours of `palette`."""
  return np.asarray(palette, np.uint8)[np.asarray(mask, np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
  """The image with the colour mask blended over non-background pixels."""
  image = np.asarray(image, np.float32)
  colors = colorize(mask, palette).astype(np.float32)
  blend = np.where((np.asarray(mask) > 0)[..., None],
                   (1 - alpha) * image + alpha * colors, image)
  return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def result_panel(image: np.ndarray, truth: np.ndarray | None,
                 prediction: np.ndarray, *, palette: np.ndarray,
                 gap: int = 4) -> np.ndarray:
  """image | ground truth | prediction | overlay, side by side (uint8)."""
  parts = [np.asarray(image, np.uint8)]
  if truth is not None:
    parts.append(colorize(truth, palette))
  parts += [colorize(prediction, palette),
            overlay(image, prediction, palette)]
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
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  return [Patch(color=np.asarray(palette)[int(i)] / 255.0,
                label=class_names[int(i)] if int(i) < len(class_names)
                else 'ignore')
          for i in class_ids]


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]):
  """A matplotlib Figure of the row-normalised confusion matrix.

  Built without pyplot, so it needs no display backend and leaves the
  notebook's backend alone (`display(fig)` shows it, `fig.savefig` saves).
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
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
