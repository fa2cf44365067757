"""Training and eval transforms: alignment, padding, the crop-box shortcut."""

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.data import augment, voc
from deeplab_jax.data.labels import IGNORE_LABEL
from deeplab_jax.inference.policy import InferencePolicy
from deeplab_jax.inference.segmenter import whole_canvas
from deeplab_jax.models.backbones import INCEPTION_PREPROCESSING, Preprocessing

PALETTE = voc.color_map()
PRE = INCEPTION_PREPROCESSING
# ResNet-style: mean subtraction, no scaling (the reference's resnet_v1).
MEAN_SUBTRACTION = Preprocessing(mean=(123.15, 115.90, 103.06),
                                 scale=(1.0, 1.0, 1.0))


def _blocky_example(seed, height=150, width=200, block=10):
  """A label map of random class blocks and an image that is its colour."""
  rng = np.random.default_rng(seed)
  blocks = rng.integers(0, 21, size=(-(-height // block), -(-width // block)))
  label = np.kron(blocks, np.ones((block, block), np.int64))[:height, :width]
  label = label.astype(np.uint8)
  return Image.fromarray(PALETTE[label]), label


def _interior(label, radius=2):
  """Pixels whose (2r+1)^2 neighbourhood lies in the crop and has a single
  label (at the crop border, bilinear reads pixels outside it)."""
  h, w = label.shape
  padded = np.pad(label.astype(np.int32), radius, constant_values=-1)
  same = np.ones_like(label, bool)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      same &= padded[dy:dy + h, dx:dx + w] == label
  return same


@pytest.mark.parametrize('seed', range(12))
def test_image_and_label_stay_aligned_through_scale_crop_flip(seed):
  image, label = _blocky_example(seed)
  rng = np.random.default_rng(seed)
  out_image, out_label = augment.random_scale_crop_flip(
      image, label, rng, crop_size=129, preprocessing=PRE,
      ignore_label=IGNORE_LABEL)
  assert out_image.shape == (129, 129, 3) and out_image.dtype == np.float32
  assert out_label.shape == (129, 129) and out_label.dtype == np.uint8
  pixels = PRE.denormalize(out_image)
  inside = _interior(out_label) & (out_label != 255)
  assert inside.sum() > 100
  expected = PALETTE[out_label[inside]]
  # Bilinear blending only reaches 1-2 pixels from a block edge at scale 2.
  np.testing.assert_allclose(pixels[inside], expected, atol=2)
  # Padding: ignore label and the mean pixel (0 after normalisation).
  padding = out_label == 255
  np.testing.assert_array_equal(out_image[padding], 0.0)


def test_flip_and_scale_both_happen_over_seeds():
  image, label = _blocky_example(0, height=100, width=100)
  flipped, sizes = 0, set()
  for seed in range(40):
    out_image, out_label = augment.random_scale_crop_flip(
        image, label, np.random.default_rng(seed), crop_size=257,
        preprocessing=PRE, ignore_label=IGNORE_LABEL)
    sizes.add(int((out_label != 255).sum()))
    rng = np.random.default_rng(seed)
    scale = augment.sample_scale(rng, 0.5, 2.0, 0.25)
    assert scale in np.linspace(0.5, 2.0, 7)
    # Column 0 of an unflipped, unpadded-left crop starts at image column 0.
    flipped += int(out_label[0, 0] == 255)
  assert len(sizes) >= 5  # Several different scales were drawn.
  assert 0 < flipped < 40  # Some crops flipped (padding moved left).


def test_crop_box_shortcut_equals_resize_then_crop():
  image, label = _blocky_example(3, height=120, width=90, block=7)
  crop = 97
  for seed in range(10):
    rng = np.random.default_rng(seed)
    out_image, out_label = augment.random_scale_crop_flip(
        image, label, rng, crop_size=crop, flip=False, preprocessing=PRE,
        ignore_label=IGNORE_LABEL)
    # Replay the same random draws the naive way.
    rng = np.random.default_rng(seed)
    scale = augment.sample_scale(rng, 0.5, 2.0, 0.25)
    sh, sw = int(120 * scale), int(90 * scale)
    top = int(rng.integers(0, max(sh, crop) - crop + 1))
    left = int(rng.integers(0, max(sw, crop) - crop + 1))
    full_image = np.asarray(image.resize((sw, sh), Image.BILINEAR))
    rows = np.minimum(((np.arange(sh) + 0.5) * 120 / sh).astype(int), 119)
    cols = np.minimum(((np.arange(sw) + 0.5) * 90 / sw).astype(int), 89)
    full_label = label[rows[:, None], cols[None, :]]
    naive_label = np.full((crop, crop), 255, np.uint8)
    naive_image = np.zeros((crop, crop, 3), np.float32)
    part = full_label[top:top + crop, left:left + crop]
    naive_label[:part.shape[0], :part.shape[1]] = part
    naive_image[:part.shape[0], :part.shape[1]] = PRE.normalize(
        full_image[top:top + crop, left:left + crop])
    np.testing.assert_array_equal(out_label, naive_label)
    np.testing.assert_allclose(out_image, naive_image, atol=2 / 127.5)


def test_whole_mode_canvas_keeps_every_pixel_and_pads_with_the_mean():
  image, _ = _blocky_example(5, height=150, width=200)
  pixels = np.asarray(image)
  policy = InferencePolicy(crop_size=193)
  canvas, valid = whole_canvas(policy, PRE, pixels)
  # Never cropped: at least the crop size, a larger side on the next
  # k * 64 + 1.
  assert canvas.shape == (193, 257, 3) and valid == (150, 200)
  np.testing.assert_array_equal(PRE.denormalize(canvas[:150, :200]), pixels)
  np.testing.assert_array_equal(canvas[150:], 0.0)
  np.testing.assert_array_equal(canvas[:, 200:], 0.0)


def test_normalize_matches_the_reference_preprocessing():
  pixels = np.array([0, 127.5, 255]).astype(np.float32)
  np.testing.assert_allclose(PRE.normalize(pixels), [-1, 0, 1], atol=1e-6)
  # Bit for bit the reference's x * (1 / 127.5) - 1 (what the published
  # MobileNetV2 weights and their parity tests were computed with).
  rgb = np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1)
  np.testing.assert_array_equal(
      PRE.normalize(rgb),
      rgb.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0))
  np.testing.assert_array_equal(PRE.denormalize(PRE.normalize(rgb)), rgb)


def test_pipeline_normalises_and_pads_the_backbones_way():
  """Another backbone's preprocessing flows through crop and eval padding:
  the image is mean-subtracted (per channel), padding is the mean pixel."""
  image, label = _blocky_example(7, height=60, width=50)
  out_image, out_label = augment.random_scale_crop_flip(
      image, label, np.random.default_rng(0), crop_size=129, min_scale=1.0,
      max_scale=1.0, flip=False, preprocessing=MEAN_SUBTRACTION,
      ignore_label=IGNORE_LABEL)
  expected = np.asarray(image, np.float32) - np.asarray(
      MEAN_SUBTRACTION.mean, np.float32)
  np.testing.assert_allclose(out_image[:60, :50], expected, atol=1e-4)
  np.testing.assert_array_equal(out_image[60:], 0.0)  # The mean pixel.
  np.testing.assert_array_equal(out_label[60:], IGNORE_LABEL)
  padded, valid = whole_canvas(InferencePolicy(input_scale='fit',
                                               crop_size=64),
                               MEAN_SUBTRACTION, np.asarray(image))
  assert valid == (60, 50) and padded.shape == (64, 64, 3)
  np.testing.assert_allclose(padded[:60, :50], expected, atol=1e-4)
  np.testing.assert_array_equal(padded[:, 50:], 0.0)
