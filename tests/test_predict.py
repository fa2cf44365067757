"""Predict never loses an output: bad files are skipped and named, names
never collide, 16-bit images keep their content, and a folder with nothing
to segment is an error (exit 1), found before the model is set up. It takes
a folder (its tree with --recursive), a file or a glob, never reads its own
outputs, and writes overlays a person can read."""

import json

import numpy as np
import pytest
from PIL import Image

from deeplab_jax import predict
from deeplab_jax.errors import DatasetError
from deeplab_jax.inference import Segmentation


def _constant_segmenter(photo, name='image', with_confidence=False):
  """Stands in for the model: class 1 on the left half, 0 elsewhere."""
  del name, with_confidence
  classes = np.zeros(photo.shape[:2], np.uint8)
  classes[:, :photo.shape[1] // 2] = 1
  return Segmentation(classes, None, 'whole', 1.0, 0, 0.0)


@pytest.fixture
def fake_model(monkeypatch):
  monkeypatch.setattr(predict, 'segment_function',
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
  with pytest.raises(DatasetError, match='is not a folder, a file or a glob'):
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


def _photo(path, size=(20, 10), colour=(200, 30, 30)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new('RGB', size, colour).save(path)


def test_a_file_a_glob_and_a_tree(fake_model, tmp_path, capfd):
  photos = tmp_path / 'photos'
  _photo(photos / 'a.jpg')
  _photo(photos / 'day1' / 'b.png')
  _photo(photos / 'day1' / 'night' / 'c.png')
  # One file.
  one = predict.predict_folder(_config(), None, str(photos / 'a.jpg'),
                               str(tmp_path / 'one'))
  assert one['images'] == 1 and (tmp_path / 'one' / 'a_mask.png').exists()
  # A folder without --recursive: the subfolders' images are counted and
  # named in one line, not silently left out.
  flat = predict.predict_folder(_config(), None, str(photos),
                                str(tmp_path / 'flat'))
  assert flat['images'] == 1
  assert flat['not_recursed'] == ['day1/b.png', 'day1/night/c.png']
  assert ('Not segmenting 2 image(s) in 2 subfolder(s)' in
          capfd.readouterr().out)
  # --recursive mirrors the tree.
  tree = predict.predict_folder(_config(), None, str(photos),
                                str(tmp_path / 'tree'), recursive=True)
  assert tree['images'] == 3
  for name in ('a_mask.png', 'day1/b_mask.png', 'day1/night/c_mask.png',
               'day1/night/c_overlay.png'):
    assert (tmp_path / 'tree' / name).exists(), name
  assert tree['outputs']['day1/night/c.png'] == 'day1/night/c'
  # A glob, recursive with **.
  glob = predict.predict_folder(_config(), None, str(photos / '**' / '*.png'),
                                str(tmp_path / 'glob'))
  assert sorted(glob['class_fractions']) == ['day1/b.png', 'day1/night/c.png']


def test_output_inside_the_input_is_refused_before_any_work(tmp_path):
  photos = tmp_path / 'photos'
  _photo(photos / 'a.jpg')
  for output in (photos, photos / 'predictions'):
    with pytest.raises(DatasetError, match='would segment its own masks'):
      predict.check_folders(str(photos), str(output))
    assert not (photos / 'predictions').exists()
  _photo(photos / 'out' / 'old_mask.png')
  with pytest.raises(DatasetError, match='would segment its own masks'):
    predict.check_folders(str(photos / '**' / '*.png'), str(photos / 'out'))


def test_overlay_colours_stand_out_and_the_legend_names_the_classes(
    fake_model, tmp_path):
  """A cat (VOC's dark 64, 0, 0) on an orange kitten: the overlay's colour
  is bright and outlined, and the legend lists each class and its share."""
  photos = tmp_path / 'photos'
  _photo(photos / 'kitten.png', size=(200, 100), colour=(230, 140, 60))
  summary = predict.predict_folder(_config(), None, str(photos),
                                   str(tmp_path / 'out'))
  assert summary['class_fractions']['kitten.png'] == {
      'background': 0.5, 'aeroplane': 0.5}
  with Image.open(tmp_path / 'out' / 'kitten_overlay.png') as picture:
    overlay = np.asarray(picture.convert('RGB')).astype(int)
  assert overlay.shape[0] == 100 and overlay.shape[1] > 200  # + legend.
  photo = np.array([230, 140, 60])
  coloured = overlay[50, 40]  # Inside the class-1 half.
  assert np.abs(coloured - photo).sum() > 120  # Stands out.
  np.testing.assert_array_equal(overlay[50, 150], photo)  # Background.
  outline = overlay[50, 99]  # The class edge: its colour, opaque.
  assert np.abs(outline - photo).sum() > np.abs(coloured - photo).sum()
  legend = overlay[:, 200:]
  assert (legend < 100).any()  # Text was drawn.
  with Image.open(tmp_path / 'out' / 'kitten_mask.png') as mask:
    assert mask.mode == 'P' and set(np.unique(np.asarray(mask))) == {0, 1}


def test_the_eight_orientations_give_the_upright_mask(toy_model, tmp_path,
                                                      voc_sample_dir):
  """A real photo stored turned and mirrored, with the EXIF orientation
  that shows it upright: each mask equals the upright copy's, pixel for
  pixel (the toy backbone: the model's weights do not matter here)."""
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import create_model  # pylint: disable=g-import-not-at-top
  from tests.data.test_images import STORE, with_orientation  # pylint: disable=g-import-not-at-top
  config = toy_model(default_config())
  config.eval.scales, config.eval.flip = (1.0,), False
  config.eval.output_stride = 16
  model = create_model(config.model, output_stride=16)
  upright = np.asarray(Image.open(
      voc_sample_dir / 'VOC2012' / 'JPEGImages' / '2007_000129.jpg'))
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(upright).save(photos / 'upright.png')
  for orientation in range(1, 9):
    (photos / f'o{orientation}.png').write_bytes(
        with_orientation(STORE[orientation](upright), orientation))
  summary = predict.predict_folder(config, model, str(photos),
                                   str(tmp_path / 'out'))
  assert summary['images'] == 9
  with Image.open(tmp_path / 'out' / 'upright_mask.png') as mask:
    want = np.asarray(mask)
  assert want.shape == upright.shape[:2] and len(np.unique(want)) > 1
  for orientation in range(1, 9):
    with Image.open(tmp_path / 'out' / f'o{orientation}_mask.png') as mask:
      np.testing.assert_array_equal(np.asarray(mask), want)
