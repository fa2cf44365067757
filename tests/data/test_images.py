"""Images are read as a viewer shows them: all eight EXIF orientations
(against the EXIF specification, written here in numpy), bit depths and
modes."""

import io

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.data import images

# EXIF orientation -> the displayed image from the stored pixels (the
# specification's rows and columns, not PIL's implementation).
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                      # Mirrored left-right.
    3: lambda a: a[::-1, ::-1],                   # Rotated 180.
    4: lambda a: a[::-1],                         # Mirrored top-bottom.
    5: lambda a: np.swapaxes(a, 0, 1),            # Transposed.
    6: lambda a: np.rot90(a, -1),                 # 90 clockwise.
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),  # Transverse.
    8: lambda a: np.rot90(a, 1),                  # 90 counter-clockwise.
}
# The stored pixels that display as the upright image (the inverses).
STORE = {**DISPLAY, 6: DISPLAY[8], 8: DISPLAY[6]}


def upright_test_image(height=30, width=50):
  """A non-square RGB image no turn or mirror maps onto itself."""
  yy, xx = np.mgrid[0:height, 0:width]
  return np.stack([xx * 5 % 256, yy * 8 % 256, (xx * yy) % 256],
                  -1).astype(np.uint8)


def with_orientation(pixels, orientation, fmt='PNG', **save):
  """Encoded bytes of `pixels` carrying EXIF `orientation`."""
  exif = Image.Exif()
  exif[images.ORIENTATION_TAG] = orientation
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(pixels)).save(
      buffer, format=fmt, exif=exif.tobytes(), **save)
  return buffer.getvalue()


@pytest.mark.parametrize('orientation', range(1, 9))
def test_each_orientation_reads_as_displayed(orientation):
  upright = upright_test_image()
  stored = STORE[orientation](upright)
  np.testing.assert_array_equal(DISPLAY[orientation](stored), upright)
  data = with_orientation(stored, orientation)
  np.testing.assert_array_equal(images.read_rgb(data), upright)
  shown, as_stored, turn = images.displayed_size(data)
  assert turn == orientation
  assert shown == (50, 30) and as_stored == stored.shape[1::-1]
  # Decoded once: the tag is gone from what comes out, so nothing turns it
  # twice.
  image, turn = images.open_image(data)
  assert turn == orientation and images.orientation(image) == 1


def test_a_phone_jpeg_is_upright():
  yy, xx = np.mgrid[0:40, 0:64]
  upright = np.stack([xx * 4, yy * 6, 100 + 0 * xx], -1).astype(np.uint8)
  data = with_orientation(STORE[6](upright), 6, fmt='JPEG', quality=95)
  pixels = images.read_rgb(data).astype(int)
  assert pixels.shape == (40, 64, 3)
  assert np.abs(pixels - upright).mean() < 2  # JPEG noise only.
  assert np.abs(pixels - upright[::-1, ::-1]).mean() > 40  # Not turned.


def test_bad_exif_is_the_photo_as_stored():
  upright = upright_test_image()
  data = with_orientation(upright, 9)  # Not an orientation.
  np.testing.assert_array_equal(images.read_rgb(data), upright)


def test_bit_depths_and_modes_become_rgb():
  ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
  buffer = io.BytesIO()
  Image.fromarray(ramp).save(buffer, format='PNG')
  pixels = images.read_rgb(buffer.getvalue())
  np.testing.assert_array_equal(pixels[..., 0],
                                np.round(ramp / 257.0).astype(np.uint8))
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  buffer = io.BytesIO()
  Image.fromarray(rgba, 'RGBA').save(buffer, format='PNG')
  pixels = images.read_rgb(buffer.getvalue())
  assert pixels.shape == (4, 4, 3) and (pixels[..., 0] == 200).all()
  cmyk = Image.new('CMYK', (3, 3), (0, 255, 255, 0))  # Red.
  buffer = io.BytesIO()
  cmyk.save(buffer, format='JPEG', quality=100)
  red = images.read_rgb(buffer.getvalue())
  assert red[..., 0].min() > 240 and red[..., 1:].max() < 15


def test_a_larger_image_than_allowed_is_refused_before_decoding():
  buffer = io.BytesIO()
  Image.new('RGB', (40, 30)).save(buffer, format='PNG')
  with pytest.raises(images.ImageTooLargeError,
                     match='1,200 pixels, more than config.eval.max_image'):
    images.read_rgb(buffer.getvalue(), max_pixels=1000)
