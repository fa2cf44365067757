"""Segmentation metrics from a confusion matrix (rows: truth, cols: prediction).

mIoU follows the reference (`tf.metrics.mean_iou`): per-class IoU =
TP / (TP + FP + FN), averaged over the classes whose union is not empty.
Pixels labelled `ignore_label` (object boundaries, padding) never count.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(predictions: jax.Array, labels: jax.Array,
                     num_classes: int, ignore_label: int) -> jax.Array:
  """[num_classes, num_classes] int32 counts; jit-friendly.

  Args:
    predictions: int class ids, any shape.
    labels: int class ids of the same shape; `ignore_label` is skipped, and
      so is any id outside [0, num_classes).
  """
  labels = labels.astype(jnp.int32).reshape(-1)
  predictions = predictions.astype(jnp.int32).reshape(-1)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jnp.bincount(index, weights=valid.astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def confusion_matrix_numpy(predictions: np.ndarray, labels: np.ndarray,
                           num_classes: int,
                           ignore_label: int) -> np.ndarray:
  """`confusion_matrix` on the host, for arrays of any shape (int64)."""
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  predictions = np.asarray(predictions).astype(np.int64).reshape(-1)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  index = labels[valid] * num_classes + predictions[valid]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(
      num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
  """Per-class IoU; NaN for classes absent from both truth and prediction."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - true_positive
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, true_positive / union, np.nan)


def summarize(confusion: np.ndarray,
              class_names: Sequence[str]) -> dict[str, object]:
  """mIoU, per-class IoU by name, pixel accuracy and pixel count."""
  confusion = np.asarray(confusion, np.int64)
  iou = iou_from_confusion(confusion)
  total = int(confusion.sum())
  return {
      'miou': float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
      'per_class_iou': {
          name: (None if np.isnan(v) else float(v))
          for name, v in zip(class_names, iou)
      },
      'pixel_accuracy': float(np.trace(confusion) / total) if total else 0.0,
      'pixels': total,
  }
