"""From logits on the model's grid to class ids at the image's own size:
against TensorFlow's resizes (an independent implementation), and tiles of
one grid blended back into it, in bounded memory."""

import numpy as np
import pytest

from deeplab_jax.inference import blend


def _clear(scores, margin=1e-4):
  """Pixels whose argmax float rounding cannot flip."""
  top2 = np.sort(scores, -1)[..., -2:]
  return top2[..., 1] - top2[..., 0] > margin


def test_whole_view_equals_tf_align_corners_resize_then_argmax():
  """A 100x70 image in a 129x129 canvas, logits on its 33x33 grid (stride
  4): the reference resizes them to the canvas with align corners."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  grid = np.random.default_rng(3).normal(size=(33, 33, 6)).astype(np.float32)
  view = blend.WholeView(grid[None], blend.pixel_map(100, 100, 33, 4.0),
                         blend.pixel_map(70, 70, 33, 4.0))
  ours, confidence = blend.finish([view], 100, 70, 6, with_confidence=True)
  expected = tf.compat.v1.image.resize_bilinear(
      grid[None], (129, 129), align_corners=True)[0].numpy()[:100, :70]
  clear = _clear(expected)
  assert ours.shape == (100, 70) and clear.mean() > 0.99
  np.testing.assert_array_equal(ours[clear], expected.argmax(-1)[clear])
  softmax = np.exp(expected - expected.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  np.testing.assert_allclose(confidence, softmax.max(-1), atol=1e-5)


def test_a_fitted_image_is_scored_at_its_own_size():
  """A 250x180 image fitted into a 129 canvas (as 129x93, PIL's pixel
  centres): logits -> canvas with align corners, then the fitted corner ->
  the image's size with half-pixel centres (TF2's bilinear resize)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  grid = np.random.default_rng(4).normal(size=(33, 33, 5)).astype(np.float32)
  view = blend.WholeView(grid[None], blend.pixel_map(250, 129, 33, 4.0),
                         blend.pixel_map(180, 93, 33, 4.0))
  ours, _ = blend.finish([view], 250, 180, 5)
  canvas = tf.compat.v1.image.resize_bilinear(grid[None], (129, 129),
                                              align_corners=True)
  expected = tf.image.resize(canvas[:, :129, :93], (250, 180),
                             method='bilinear')[0].numpy()
  clear = _clear(expected)
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(ours[clear], expected.argmax(-1)[clear])


def _tiled(grid, span, step, weighting, batch=3):
  """A SlideView whose tiles are the windows of one global grid."""
  rows, cols = grid.shape[1:3]
  starts = (tuple(range(0, rows - span + 1, step)),
            tuple(range(0, cols - span + 1, step)))
  assert starts[0][-1] + span == rows and starts[1][-1] + span == cols

  def run(chunk):
    return np.stack([grid[:, starts[0][i]:starts[0][i] + span,
                          starts[1][j]:starts[1][j] + span]
                     for i, j in chunk], axis=1)

  return blend.SlideView(
      tile_starts=starts, tile_span=span, grid_shape=(rows, cols),
      run_tiles=run, batch=batch, flips=grid.shape[0],
      rows=blend.pixel_map(rows * 4 - 3, rows * 4 - 3, rows, 4.0),
      cols=blend.pixel_map(cols * 4 - 3, cols * 4 - 3, cols, 4.0),
      weighting=weighting)


@pytest.mark.parametrize('weighting', ['gaussian', 'uniform'])
def test_tiles_of_one_grid_blend_back_into_it(weighting):
  """Tiles that agree where they overlap (cut from one grid) give the
  grid's own result: the blend is a weighted mean of equal values."""
  grid = np.random.default_rng(5).normal(
      size=(2, 73, 49, 4)).astype(np.float32)  # Two flips.
  size = (73 * 4 - 3, 49 * 4 - 3)
  whole = blend.WholeView(grid, blend.pixel_map(size[0], size[0], 73, 4.0),
                          blend.pixel_map(size[1], size[1], 49, 4.0))
  want, _ = blend.finish([whole], *size, 4)
  view = _tiled(grid, span=17, step=8, weighting=weighting)
  got, _ = blend.finish([view], *size, 4)
  assert (got == want).mean() > 0.9999


def test_one_tile_over_the_whole_grid_is_exactly_whole():
  grid = np.random.default_rng(6).normal(size=(1, 17, 17, 3)).astype(
      np.float32)
  size = (65, 65)
  whole = blend.WholeView(grid, blend.pixel_map(65, 65, 17, 4.0),
                          blend.pixel_map(65, 65, 17, 4.0))
  want, want_confidence = blend.finish([whole], *size, 3,
                                       with_confidence=True)
  got, got_confidence = blend.finish(
      [_tiled(grid, span=17, step=8, weighting='gaussian')], *size, 3,
      with_confidence=True)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_confidence, want_confidence)


def test_overlaps_are_weighted_towards_each_tile_centre():
  """Two tiles disagree on their overlap: uniform weighting gives their
  mean everywhere there; gaussian trusts the nearer tile's centre."""
  span, step = 9, 4
  starts = ((0,), (0, step))
  first = np.zeros((1, 1, span, span, 2), np.float32)
  first[..., 0] = 1.0
  second = np.zeros_like(first)
  second[..., 1] = 1.0

  def run(chunk):
    return np.concatenate([first if j == 0 else second for _, j in chunk],
                          axis=1)

  for weighting, check in (('uniform', lambda v: np.allclose(v, 0.5)),
                           ('gaussian', lambda v: v[0] > 0.5 > v[-1])):
    view = blend.SlideView(
        tile_starts=starts, tile_span=span, grid_shape=(span, span + step),
        run_tiles=run, batch=2, flips=1, rows=blend.AxisMap(1, 0, span),
        cols=blend.AxisMap(1, 0, span + step), weighting=weighting)
    view.ensure_rows(span)
    overlap = view.take(0, span)[0, span // 2, step:span, 0]
    assert check(overlap), (weighting, overlap)
    alone = view.take(0, span)[0, :, :step]
    np.testing.assert_array_equal(alone[..., 0], 1.0)  # Exactly tile one.


def test_a_tall_image_holds_a_few_tile_rows_not_the_image():
  grid = np.random.default_rng(7).normal(size=(1, 401, 513, 21)).astype(
      np.float32)
  view = _tiled(grid, span=33, step=16, weighting='gaussian', batch=8)
  size = (401 * 4 - 3, 513 * 4 - 3)
  classes, _ = blend.finish([view], *size, 21)
  assert classes.shape == size
  band = blend.band_rows(2176, 21, 1, size[0])  # Output rows at a time.
  assert band < size[0] // 4
  # The band's grid rows, one tile, one step: not the image's 401.
  assert view.peak_rows <= band // 4 + 3 + 33 + 16, (band, view.peak_rows)
