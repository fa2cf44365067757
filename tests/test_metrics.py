"""Confusion matrix, IoU and loss against plain numpy."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deeplab_jax import losses, metrics


def _numpy_confusion(pred, label, num_classes, ignore=255):
  cm = np.zeros((num_classes, num_classes), np.int64)
  for p, t in zip(pred.reshape(-1), label.reshape(-1)):
    if t != ignore:
      cm[t, p] += 1
  return cm


def test_confusion_matrix_and_iou_match_numpy_with_ignore_pixels():
  rng = np.random.default_rng(0)
  num_classes = 6
  labels = rng.integers(0, num_classes, size=(3, 17, 19))
  labels[rng.random(labels.shape) < 0.2] = 255  # Ignore pixels.
  predictions = np.where(rng.random(labels.shape) < 0.6,
                         np.where(labels == 255, 0, labels),
                         rng.integers(0, num_classes, size=labels.shape))
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(predictions),
                                           jnp.asarray(labels), num_classes,
                                           ignore_label=255))
  expected = _numpy_confusion(predictions, labels, num_classes)
  np.testing.assert_array_equal(cm, expected)
  assert cm.sum() == (labels != 255).sum()
  # IoU by its definition, per class, over non-ignored pixels only.
  keep = labels != 255
  for c in range(num_classes):
    inter = np.sum((predictions == c) & (labels == c) & keep)
    union = np.sum(((predictions == c) | (labels == c)) & keep)
    assert metrics.iou_from_confusion(cm)[c] == pytest.approx(inter / union)
  summary = metrics.summarize(cm, [f'c{i}' for i in range(num_classes)])
  assert summary['miou'] == pytest.approx(
      np.mean(metrics.iou_from_confusion(cm)))
  assert summary['pixel_accuracy'] == pytest.approx(
      np.mean(predictions[keep] == labels[keep]))


def test_absent_classes_do_not_count_in_miou():
  cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
  iou = metrics.iou_from_confusion(cm)
  assert np.isnan(iou[2])
  summary = metrics.summarize(cm, ['a', 'b', 'c'])
  assert summary['per_class_iou']['c'] is None
  assert summary['miou'] == pytest.approx((5 / 8 + 3 / 6) / 2)


def test_cross_entropy_ignores_255_and_averages_labelled_pixels():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 7))
  labels[0, 0] = 255
  keep = labels != 255
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(np.take_along_axis(
      log_probs, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep])
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                     ignore_label=255)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  all_ignored = np.full((2, 5, 7), 255)
  assert float(losses.softmax_cross_entropy(
      jnp.asarray(logits), jnp.asarray(all_ignored), ignore_label=255)) == 0.0


def test_hard_pixel_mining_keeps_the_largest_losses():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(1, 10, 10, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(1, 10, 10))
  pixel = np.asarray(optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits), jnp.asarray(labels))).reshape(-1)
  top = np.sort(pixel)[::-1][:25]
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                     ignore_label=255,
                                     top_k_percent_pixels=0.25)
  assert float(got) == pytest.approx(top.mean(), rel=1e-5)
  # Annealing: at step 0 of 100 every pixel counts.
  start = losses.softmax_cross_entropy(
      jnp.asarray(logits), jnp.asarray(labels), ignore_label=255,
      top_k_percent_pixels=0.25, hard_example_mining_step=100, step=0)
  assert float(start) == pytest.approx(pixel.mean(), rel=1e-5)


def test_class_weights_scale_each_pixel_and_normalise_by_their_sum():
  """As PyTorch's CrossEntropyLoss(weight=w, ignore_index=255): sum of
  w[y] * CE over labelled pixels / sum of w[y] (NumPy reference)."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 3, 4)).astype(np.int32)
  labels[0, 0, :2] = 255
  weights = np.array([0.5, 2.0, 4.0], np.float32)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  keep = labels != 255
  safe = np.where(keep, labels, 0)
  ce = -np.take_along_axis(log_p, safe[..., None], -1)[..., 0]
  w = np.where(keep, weights[safe], 0.0)
  expected = (ce * w).sum() / w.sum()
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                     ignore_label=255, class_weights=weights)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  uniform = losses.softmax_cross_entropy(
      jnp.asarray(logits), jnp.asarray(labels), ignore_label=255,
      class_weights=np.ones(3, np.float32))
  plain = losses.softmax_cross_entropy(jnp.asarray(logits),
                                       jnp.asarray(labels), ignore_label=255)
  np.testing.assert_allclose(float(uniform), float(plain), rtol=1e-6)
