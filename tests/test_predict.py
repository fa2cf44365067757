"""Predict never loses an output: bad files are skipped and named, names
never collide, 16-bit images keep their content, and a folder with nothing
to segment is an error (exit 1), found before the model is set up."""

import json

import numpy as np
import pytest
from PIL import Image

from deeplab_jax import predict
from deeplab_jax.errors import DatasetError


def _constant_segmenter(photo):
  """Stands in for the model: class 1 on the left half, 0 elsewhere."""
  classes = np.zeros(photo.shape[:2], np.uint8)
  classes[:, :photo.shape[1] // 2] = 1
  return classes, np.ones(photo.shape[:2], np.float32)


@pytest.fixture
def fake_model(monkeypatch):
  monkeypatch.setattr(predict, 'make_segmenter',
                      lambda model, config: _constant_segmenter)


def _config(max_pixels=89_478_485):
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config()
  config.eval.max_image_pixels = max_pixels
  return config


def test_same_stem_files_get_their_own_outputs(fake_model, tmp_path):
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.new('RGB', (20, 10), (255, 0, 0)).save(photos / 'dup.jpg')
  Image.new('RGB', (30, 10), (0, 255, 0)).save(photos / 'dup.png')
  Image.new('RGB', (8, 8)).save(photos / 'solo.png')
  out = tmp_path / 'out'
  summary = predict.predict_folder(_config(), None, str(photos), str(out))
  assert summary['images'] == 3
  assert summary['outputs'] == {'dup.jpg': 'dup_jpg', 'dup.png': 'dup_png',
                                'solo.png': 'solo'}
  with Image.open(out / 'dup_jpg_mask.png') as a, Image.open(
      out / 'dup_png_mask.png') as b:
    assert a.size == (20, 10) and b.size == (30, 10)  # Neither overwritten.
  assert (out / 'solo_mask.png').exists()


def test_a_bad_or_huge_file_is_skipped_and_the_rest_go_on(fake_model,
                                                         tmp_path, capfd):
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.new('RGB', (40, 30)).save(photos / 'big.png')  # 1,200 pixels.
  Image.new('RGB', (10, 10)).save(photos / 'ok.png')
  (photos / 'notes.txt').write_text('not an image')
  (photos / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'0' * 20)
  out = tmp_path / 'out'
  summary = predict.predict_folder(_config(max_pixels=1000), None,
                                   str(photos), str(out))
  assert summary['images'] == 1 and (out / 'ok_mask.png').exists()
  reasons = summary['skip_reasons']
  assert set(reasons) == {str(photos / n) for n in
                          ('big.png', 'notes.txt', 'broken.jpg')}
  assert 'config.eval.max_image_pixels = 1,000' in reasons[
      str(photos / 'big.png')]
  assert 'Skipping' in capfd.readouterr().err
  written = json.loads((out / 'predictions.json').read_text())
  assert written['skipped'] == sorted(reasons)


def test_decompression_bomb_is_named_not_raised(fake_model, tmp_path):
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.new('L', (300, 300)).save(photos / 'bomb.png')  # 90,000 pixels.
  Image.new('RGB', (10, 10)).save(photos / 'ok.png')
  # PIL's own guard fires above twice the limit: still one named skip.
  summary = predict.predict_folder(_config(max_pixels=100), None,
                                   str(photos), str(tmp_path / 'out'))
  assert summary['images'] == 1
  assert 'max_image_pixels' in summary['skip_reasons'][str(photos /
                                                           'bomb.png')]


def test_16_bit_png_is_scaled_by_its_range(tmp_path):
  ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
  path = tmp_path / 'depth.png'
  Image.fromarray(ramp).save(path)
  with Image.open(path) as image:
    assert image.mode.startswith('I')
  pixels = predict.read_photo(path)
  assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
  np.testing.assert_array_equal(pixels[..., 0],
                                np.round(ramp / 257.0).astype(np.uint8))
  assert len(np.unique(pixels)) == 64  # Not clipped to white.


def test_nothing_segmented_is_an_error(fake_model, tmp_path):
  photos = tmp_path / 'photos'
  photos.mkdir()
  (photos / 'a.txt').write_text('x')
  with pytest.raises(DatasetError, match=r'None of the 1 file\(s\)'):
    predict.predict_folder(_config(), None, str(photos), str(tmp_path / 'o'))


def test_folders_are_checked_before_any_model_work(tmp_path):
  with pytest.raises(DatasetError, match='is not a folder'):
    predict.check_folders(str(tmp_path / 'missing'), str(tmp_path / 'out'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DatasetError, match='holds no files'):
    predict.check_folders(str(tmp_path / 'empty'), str(tmp_path / 'out'))
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.new('RGB', (4, 4)).save(photos / 'a.png')
  blocked = tmp_path / 'file'
  blocked.write_text('a file where the output folder should be')
  with pytest.raises(DatasetError, match='Cannot write the predictions'):
    predict.check_folders(str(photos), str(blocked / 'out'))
