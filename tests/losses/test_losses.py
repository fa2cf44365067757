"""Every loss term against a NumPy implementation written here from its
paper (Lovasz-softmax against the Lovasz extension's definition as an
integral over thresholds, enumerated), within 1e-5, and its gradient
against central finite differences in float64."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deeplab_jax import losses
from deeplab_jax.losses import LossContext

IGNORE = 255


def _options(**overrides):
  options = ml_collections.ConfigDict(dict(
      top_k_percent_pixels=1.0, hard_example_mining_step=0, focal_gamma=2.0,
      dice_smooth=1.0, lovasz_per_image=False))
  options.update(overrides)
  return options


def _batch(seed=0, shape=(2, 5, 6), classes=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, shape + (classes,))
  labels = rng.integers(0, classes, shape)
  labels[0, :2] = IGNORE
  labels[1, -1, -3:] = IGNORE
  return logits, labels


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _value(name, logits, labels, class_weights=None, **options):
  context = LossContext(IGNORE, logits.shape[-1], class_weights, 0,
                        _options(**options))
  term = losses.LOSSES[name]
  return float(term.numerator(jnp.asarray(logits), jnp.asarray(labels),
                              context) /
               jnp.maximum(term.denominator(jnp.asarray(labels), context),
                           1e-5))


# ------------------------------------------------------------ NumPy

def np_cross_entropy(logits, labels, weights=None):
  keep = labels != IGNORE
  p = _softmax(logits)[keep]
  y = labels[keep]
  w = np.ones(len(y)) if weights is None else np.asarray(weights)[y]
  return np.sum(-np.log(p[np.arange(len(y)), y]) * w) / np.sum(w)


def np_focal(logits, labels, gamma, weights=None):
  keep = labels != IGNORE
  p = _softmax(logits)[keep]
  y = labels[keep]
  pt = p[np.arange(len(y)), y]
  w = np.ones(len(y)) if weights is None else np.asarray(weights)[y]
  return np.sum(-(1 - pt) ** gamma * np.log(pt) * w) / np.sum(w)


def np_dice(logits, labels, smooth):
  keep = labels != IGNORE
  p = _softmax(logits)[keep]
  y = labels[keep]
  losses_ = []
  for c in range(logits.shape[-1]):
    onehot = (y == c).astype(float)
    if onehot.sum() == 0:
      continue
    dice = (2 * np.sum(p[:, c] * onehot) + smooth) / (
        np.sum(p[:, c]) + onehot.sum() + smooth)
    losses_.append(1 - dice)
  return np.mean(losses_)


def jaccard_loss(mistakes, foreground):
  """Berman et al.'s Delta_J for class c: |M| / |{y = c} union M|."""
  union = np.sum(mistakes | foreground)
  return np.sum(mistakes) / union if union else 0.0


def lovasz_extension(errors, foreground):
  """The Lovasz extension of Delta_J at `errors` in [0, 1], by its
  definition: the integral over t in [0, 1] of Delta_J({i: e_i >= t}),
  piecewise constant between the distinct error values."""
  total, previous = 0.0, 0.0
  for level in np.unique(errors):
    total += (level - previous) * jaccard_loss(errors >= level, foreground)
    previous = level
  return total


def np_lovasz(logits, labels, per_image):
  def flat(p, y):
    values = []
    for c in range(p.shape[-1]):
      fg = y == c
      if not fg.any():
        continue
      values.append(lovasz_extension(np.abs(fg - p[:, c]), fg))
    return np.mean(values)

  probs = _softmax(logits)
  if per_image:
    per = [flat(probs[i][labels[i] != IGNORE], labels[i][labels[i] != IGNORE])
           for i in range(len(labels)) if (labels[i] != IGNORE).any()]
    return np.mean(per)
  keep = labels != IGNORE
  return flat(probs[keep], labels[keep])


def test_lovasz_extension_reference_is_the_set_function_on_sets():
  """The reference's own check: on 0/1 errors the Lovasz extension is
  Delta_J itself, for every subset of a small problem (enumerated)."""
  foreground = np.array([1, 0, 1, 1, 0], bool)
  for bits in itertools.product([0, 1], repeat=5):
    mistakes = np.array(bits, bool)
    assert lovasz_extension(mistakes.astype(float), foreground) == (
        pytest.approx(jaccard_loss(mistakes, foreground)))


# ------------------------------------------------------------ values

@pytest.mark.parametrize('weights', [None, [1.0, 3.0, 0.5, 2.0]])
def test_cross_entropy_and_focal_against_numpy(weights):
  logits, labels = _batch(1)
  cw = None if weights is None else jnp.asarray(weights, jnp.float32)
  assert _value('cross_entropy', logits, labels, cw) == pytest.approx(
      np_cross_entropy(logits, labels, weights), abs=1e-5)
  for gamma in (0.0, 2.0):
    assert _value('focal', logits, labels, cw, focal_gamma=gamma) == (
        pytest.approx(np_focal(logits, labels, gamma, weights), abs=1e-5))
  # gamma 0 is cross-entropy.
  assert _value('focal', logits, labels, cw, focal_gamma=0.0) == (
      pytest.approx(_value('cross_entropy', logits, labels, cw), abs=1e-5))


def test_dice_against_numpy_ignores_ignored_and_absent_classes():
  logits, labels = _batch(2, classes=5)
  labels[labels == 4] = 0  # Class 4 absent: not part of the mean.
  for smooth in (0.0, 1.0):
    assert _value('dice', logits, labels, dice_smooth=smooth) == (
        pytest.approx(np_dice(logits, labels, smooth), abs=1e-5))
  # An ignored pixel's logits change nothing.
  changed = logits.copy()
  changed[labels == IGNORE] += 10
  assert _value('dice', changed, labels) == pytest.approx(
      _value('dice', logits, labels), abs=1e-6)


@pytest.mark.parametrize('per_image', [False, True])
def test_lovasz_softmax_against_its_definition(per_image):
  for seed in range(3):
    logits, labels = _batch(seed + 3, shape=(2, 4, 5), classes=3)
    assert _value('lovasz_softmax', logits, labels,
                  lovasz_per_image=per_image) == pytest.approx(
                      np_lovasz(logits, labels, per_image), abs=1e-5)


def test_a_perfect_prediction_costs_nothing_and_the_worst_most():
  labels = np.array([[[0, 1], [2, 1]]])
  perfect = np.eye(3)[labels] * 50.0
  for name in ('cross_entropy', 'focal', 'dice', 'lovasz_softmax'):
    assert _value(name, perfect, labels) == pytest.approx(0.0, abs=1e-4)
  wrong = np.eye(3)[(labels + 1) % 3] * 50.0
  assert _value('lovasz_softmax', wrong, labels) == pytest.approx(1.0,
                                                                  abs=1e-4)


# ------------------------------------------------------------ gradients

@pytest.mark.parametrize('name,options', [
    ('cross_entropy', {}), ('cross_entropy', {'top_k_percent_pixels': 0.5}),
    ('focal', {'focal_gamma': 2.0}), ('dice', {}),
    ('lovasz_softmax', {}), ('lovasz_softmax', {'lovasz_per_image': True}),
])
def test_gradients_against_finite_differences(name, options):
  logits, labels = _batch(7, shape=(2, 3, 4), classes=3)
  term = losses.LOSSES[name]
  with jax.enable_x64(True):
    context = LossContext(IGNORE, 3, None, 0, _options(**options))
    labels_j = jnp.asarray(labels)

    def f(x):
      return term.numerator(x, labels_j, context) / jnp.maximum(
          term.denominator(labels_j, context), 1e-5)

    x = jnp.asarray(logits, jnp.float64)
    grad = np.asarray(jax.grad(f)(x))
    assert grad.dtype == np.float64 and np.abs(grad).max() > 1e-3
    rng = np.random.default_rng(0)
    eps = 1e-6
    for flat in rng.choice(logits.size, 12, replace=False):
      index = np.unravel_index(flat, logits.shape)
      step = np.zeros_like(logits)
      step[index] = eps
      numeric = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
      assert grad[index] == pytest.approx(numeric, abs=1e-6, rel=1e-4), (
          index, grad[index], numeric)


def test_terms_are_summed_with_their_weights_and_logged_apart():
  logits, labels = _batch(4)
  config = [('cross_entropy', 1.0), ('dice', 0.5)]
  terms = losses.terms_of(config)
  context = LossContext(IGNORE, 4, None, 0, _options())
  totals = losses.denominators(terms, jnp.asarray(labels), context)
  total, shares = losses.weighted_parts(terms, jnp.asarray(logits),
                                        jnp.asarray(labels), context, totals)
  ce, dice = _value('cross_entropy', logits, labels), _value('dice', logits,
                                                             labels)
  np.testing.assert_allclose(shares, [ce, dice], atol=1e-6)
  assert float(total) == pytest.approx(ce + 0.5 * dice, abs=1e-6)
  with pytest.raises(Exception, match="config.train.loss = 'hinge' is not a "
                     "known loss: use one of 'cross_entropy', 'focal', 'dice',"
                     " 'lovasz_softmax'"):
    losses.terms_of([('hinge', 1.0)])
