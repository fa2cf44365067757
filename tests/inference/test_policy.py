"""The inference policy's geometry: input scale, whole-mode canvases, the
whole/slide choice and its message, tiles that cover every pixel."""

import pytest

from deeplab_jax.config import default_config, validate_config
from deeplab_jax.errors import ConfigError
from deeplab_jax.inference.policy import (InferencePolicy, parse_input_scale,
                                          tile_starts)


def test_input_scale_native_fit_and_factor():
  native = InferencePolicy(input_scale='native', crop_size=513)
  assert native.scaled_size(4000, 6000) == (4000, 6000)
  fit = InferencePolicy(input_scale='fit', crop_size=513)
  assert fit.scaled_size(4000, 6000) == (342, 513)
  assert fit.scaled_size(300, 200) == (300, 200)  # Fit only shrinks.
  half = InferencePolicy(input_scale=0.5)
  assert half.scaled_size(375, 500) == (188, 250)
  assert parse_input_scale('0.25') == 0.25  # As the command line gives it.
  for bad in ('big', 0, -1.0, True):
    with pytest.raises(ValueError):
      parse_input_scale(bad)


def test_config_validates_the_policy_keys():
  config = default_config()
  config.eval.input_scale = 'fit'
  validate_config(config)
  config.eval.input_scale = 'huge'
  with pytest.raises(ConfigError, match="config.eval.input_scale = 'huge'.*"
                     "'native', 'fit' or a factor"):
    validate_config(config)
  config = default_config()
  config.eval.mode = 'tiles'
  with pytest.raises(ConfigError, match="eval.mode.*'auto', 'whole', "
                     "'slide'"):
    validate_config(config)


def test_a_replaced_key_says_what_replaced_it():
  config = default_config()
  config.eval.resize_to_crop = True
  with pytest.raises(ConfigError, match="resize_to_crop was replaced by "
                     "config.eval.input_scale = 'fit'"):
    validate_config(config)


def test_whole_canvas_is_at_least_the_crop_on_a_k64_plus_1_grid():
  policy = InferencePolicy(crop_size=513)
  assert policy.whole_canvas(375, 500) == (513, 513)  # Every VOC image.
  assert policy.whole_canvas(1024, 2048) == (1025, 2049)  # Cityscapes.
  assert policy.whole_canvas(514, 700) == (577, 705)
  fixed = InferencePolicy(crop_size=257, fixed_input=True)
  assert fixed.whole_canvas(100, 50) == (257, 257)


def test_auto_slides_beyond_max_whole_pixels_and_whole_says_so():
  policy = InferencePolicy(mode='auto', max_whole_pixels=2049 * 2049)
  assert policy.choose(1024, 2048) == 'whole'
  assert policy.choose(4000, 6000) == 'slide'
  # Multi-scale counts the largest scale's input.
  multi = InferencePolicy(mode='auto', scales=(1.0, 1.75),
                          max_whole_pixels=2049 * 2049)
  assert multi.choose(1024, 2048) == 'slide'
  whole = InferencePolicy(mode='whole', max_whole_pixels=2049 * 2049)
  with pytest.raises(ConfigError, match=r'6000x4000 image needs a 24\.3 MP '
                     r'input.*--config\.eval\.mode=slide'):
    whole.choose(4000, 6000)
  fixed = InferencePolicy(mode='whole', crop_size=257, fixed_input=True)
  with pytest.raises(ConfigError, match="exported file's 257x257 input"):
    fixed.choose(300, 400)
  assert InferencePolicy(mode='auto', crop_size=257,
                         fixed_input=True).choose(300, 400) == 'slide'


def test_tiles_cover_the_image_on_one_grid():
  policy = InferencePolicy(tile_size=257, tile_stride=171, output_stride=8)
  assert policy.tile() == 257
  assert policy.stride(8) == 168  # A multiple of the 8-pixel logit grid.
  tiling = policy.tiling(375, 500, grid_stride=8)
  assert tiling.row_starts == (0, 168)
  assert tiling.col_starts == (0, 168, 336)
  assert tiling.canvas == (425, 593)  # >= the image, padded past it.
  assert all(s % 8 == 0 for s in tiling.row_starts + tiling.col_starts)
  # A tile size off the k * output stride + 1 grid is rounded down.
  assert InferencePolicy(tile_size=512, output_stride=16).tile() == 497
  # Default stride: two thirds of the tile.
  assert InferencePolicy(tile_size=513).stride(4) == 340
  for length in (1, 256, 257, 258, 1000):
    starts = tile_starts(length, 257, 168)
    assert starts[-1] + 257 >= length
    assert len(starts) == 1 or starts[-2] + 257 < length
