"""Inference programs: multi-scale + flip probabilities, XLA options (the
folded copy is pinned in tests/models/test_deeplab.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import inference
from deeplab_jax.inference import programs
from deeplab_jax.ops.resize import resize_bilinear


class _PixelwiseLinear:
  """logits = W x per pixel, at a quarter of the resolution: flip-equivariant
  by construction, and exact on linear images at any scale (align-corners
  bilinear resizing reproduces linear functions exactly)."""

  def __init__(self):
    self.weights = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)),
                               jnp.float32)

  def __call__(self, images, upsample=False):
    del upsample
    h, w = images.shape[1:3]
    small = resize_bilinear(images, ((h - 1) // 4 + 1, (w - 1) // 4 + 1))
    return jnp.einsum('nhwc,ck->nhwk', small, self.weights)


def test_multiscale_flip_of_an_equivariant_model_equals_single_scale():
  yy, xx = np.mgrid[0:65, 0:49].astype(np.float32)
  ramps = np.stack([xx / 48 - 0.5, yy / 64 - 0.5, (xx + yy) / 112 - 0.5],
                   -1)
  images = jnp.asarray(np.stack([ramps, -ramps]))
  model = _PixelwiseLinear()
  single = inference.predict_probabilities(model, images)
  multi = inference.predict_probabilities(
      model, images, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
  np.testing.assert_allclose(multi, single, atol=1e-5)
  assert not np.allclose(single[..., 0], single[..., 1])  # Not trivial.


def test_flip_averages_a_non_equivariant_model():
  model = lambda x, upsample=False: jnp.concatenate(  # noqa: E731
      [x[..., :1], -x[..., :1]], -1) * jnp.linspace(0, 1, x.shape[2])[
          None, None, :, None]
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 3))
  single = inference.predict_probabilities(model, images)
  flipped = inference.predict_probabilities(model, images, flip=True)
  assert not np.allclose(single, flipped)
  np.testing.assert_allclose(np.asarray(flipped).sum(-1), 1.0, atol=1e-6)


def test_inference_programs_use_xla_matrix_products_on_cpu(monkeypatch):
  """inference.jit (eval, predict, benchmarks) asks XLA:CPU for its own
  matrix products instead of YNNPACK's: same values, no YNNPACK fusion
  in the compiled program; an XLA without the option gets none."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(300, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(64, 96)), jnp.float32)
  fn = lambda x, w: jax.nn.relu(x @ w)
  assert inference.compiler_options() == {
      'xla_cpu_experimental_ynn_fusion_type': ''}
  ours = inference.jit(fn)
  plain = jax.jit(fn)
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  assert '__ynn_fusion' in plain.lower(x, w).compile().as_text()
  assert '__ynn_fusion' not in ours.lower(x, w).compile().as_text()
  monkeypatch.setattr(programs, 'CPU_INFERENCE_OPTIONS',
                      {'xla_cpu_no_such_option': ''})
  inference.compiler_options.cache_clear()
  try:
    assert inference.compiler_options() == {}
  finally:
    monkeypatch.undo()
    inference.compiler_options.cache_clear()
