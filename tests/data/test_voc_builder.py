"""The VOC TFDS builder on the real sample in ../shared/data."""

import io
import logging
import pathlib

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from deeplab_jax.data import pipeline, voc
from deeplab_jax.errors import DatasetError
from tests.conftest import make_voc_tar, voc_config

TRAIN, VAL = 26, 6


def _split_sizes(builder):
  return {k: v.num_examples for k, v in builder.info.splits.items()}


def test_builds_from_extracted_vocdevkit(voc_prepared):
  _, builder = voc_prepared
  assert _split_sizes(builder) == {'train': TRAIN, 'validation': VAL}
  assert builder.info.metadata['skipped_train'] == []
  # array_record files, readable by tfds.data_source.
  assert list(pathlib.Path(builder.data_dir).glob('*.array_record*'))


def test_builds_from_tar(voc_sample_dir, tmp_path):
  manual = tmp_path / 'manual'
  make_voc_tar(voc_sample_dir, manual)
  config = voc_config(tmp_path / 'data', manual)
  builder = pipeline.prepare_dataset(config.data)
  assert _split_sizes(builder) == {'train': TRAIN, 'validation': VAL}
  source = pipeline.data_source(config.data, 'validation')
  names = sorted(source[i]['file_name'].decode() for i in range(len(source)))
  assert names[0] == '2007_000033.jpg'


def test_images_keep_original_jpeg_bytes(voc_prepared, voc_sample_dir):
  config, _ = voc_prepared
  source = pipeline.data_source(config.data, 'train')
  example = source[0]
  name = example['file_name'].decode()
  original = (voc_sample_dir / 'VOC2012' / 'JPEGImages' / name).read_bytes()
  assert example['image'] == original


def test_masks_are_read_as_palette_indices(voc_prepared, voc_sample_dir):
  config, _ = voc_prepared
  source = pipeline.data_source(config.data, 'train')
  for i in range(len(source)):
    example = source[i]
    stem = example['file_name'].decode()[:-4]
    png = voc_sample_dir / 'VOC2012' / 'SegmentationClass' / f'{stem}.png'
    stored = np.asarray(Image.open(io.BytesIO(example['segmentation_mask'])))
    with Image.open(png) as palette_image:
      assert palette_image.mode == 'P'
      rgb = np.asarray(palette_image.convert('RGB'))
    np.testing.assert_array_equal(stored, np.asarray(Image.open(png)))
    # A pixel whose palette colour is (128, 0, 0) reads as 1 (aeroplane).
    aeroplane = np.all(rgb == (128, 0, 0), axis=-1)
    if aeroplane.any():
      assert set(np.unique(stored[aeroplane])) == {1}
      return
  pytest.fail('no aeroplane pixel in the sample')


def test_palette_matches_voc_colormap():
  cmap = voc.color_map()
  assert tuple(cmap[1]) == (128, 0, 0)
  assert tuple(cmap[15]) == (192, 128, 128)  # person
  assert tuple(cmap[255]) == (224, 224, 192)


def test_missing_manual_dir_names_the_files(tmp_path):
  config = voc_config(tmp_path / 'data', tmp_path / 'nowhere')
  with pytest.raises(DatasetError) as e:
    pipeline.prepare_dataset(config.data)
  message = str(e.value)
  assert 'does not exist' in message
  assert 'VOCtrainval_11-May-2012.tar' in message and voc.VOC_URL in message


def test_wrong_manual_dir_names_the_files(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'readme.txt').write_text('nothing here')
  config = voc_config(tmp_path / 'data', tmp_path / 'manual')
  with pytest.raises(DatasetError, match=r'lacks VOCtrainval_11-May-2012\.tar '
                     r'or VOCdevkit/VOC2012/'):
    pipeline.prepare_dataset(config.data)
  config.data.dataset = 'voc2012_aug'
  with pytest.raises(DatasetError, match=r'benchmark\.tgz'):
    pipeline.prepare_dataset(config.data)


def test_corrupt_jpeg_and_size_mismatch_are_skipped_and_counted(
    voc_copy, tmp_path, caplog):
  root = voc_copy / 'VOCdevkit' / 'VOC2012'
  broken = root / 'JPEGImages' / '2007_000032.jpg'
  broken.write_bytes(broken.read_bytes()[:2000])  # Truncated JPEG.
  resized = root / 'SegmentationClass' / '2007_000039.png'
  with Image.open(resized) as mask:
    small = mask.resize((mask.width // 2, mask.height // 2), Image.NEAREST)
    small.save(resized)
  config = voc_config(tmp_path / 'data', voc_copy)
  with caplog.at_level(logging.WARNING):
    builder = pipeline.prepare_dataset(config.data)
  assert _split_sizes(builder) == {'train': TRAIN - 2, 'validation': VAL}
  skipped = builder.info.metadata['skipped_train']
  assert len(skipped) == 2
  assert any('2007_000032.jpg' in s and 'unreadable image' in s
             for s in skipped)
  assert any('2007_000039.png' in s and 'but its image is' in s
             for s in skipped)
  assert 'skipped 2 of 26 examples' in caplog.text


def test_every_listed_image_missing_is_one_dataset_error(voc_copy, tmp_path):
  """TFDS alone fails with `AssertionError: Failed to finalize writing of
  split`; the user gets one DatasetError naming the empty split instead."""
  for image in (voc_copy / 'VOCdevkit' / 'VOC2012' / 'JPEGImages').iterdir():
    image.unlink()
  config = voc_config(tmp_path / 'data', voc_copy)
  with pytest.raises(DatasetError) as error:
    pipeline.prepare_dataset(config.data)
  message = str(error.value)
  assert 'voc2012: a split came out empty' in message, message
  assert 'Check config.data.manual_dir' in message


def test_stray_mask_values_stop_the_build_naming_file_and_values(
    voc_copy, tmp_path):
  path = voc_copy / 'VOCdevkit' / 'VOC2012' / 'SegmentationClass' / (
      '2007_000129.png')
  with Image.open(path) as mask:
    values = np.asarray(mask).copy()
    palette = mask.getpalette()
  values[:3, :3] = 77
  values[5, 5] = 21
  stray = Image.fromarray(values, 'P')
  stray.putpalette(palette)
  stray.save(path)
  config = voc_config(tmp_path / 'data', voc_copy)
  with pytest.raises(DatasetError, match=r'2007_000129\.png holds label values '
                     r'\[21, 77\] outside 0\.\.20 and 255'):
    pipeline.prepare_dataset(config.data)


def _save_sbd_mat(path, mask):
  scipy.io.savemat(path, {'GTcls': {'Segmentation': mask,
                                    'CategoriesPresent': np.unique(mask)}})


def test_train_aug_adds_sbd_and_excludes_voc_val(voc_copy, tmp_path):
  root = voc_copy / 'VOCdevkit' / 'VOC2012'
  sbd = voc_copy / 'benchmark_RELEASE' / 'dataset'
  (sbd / 'cls').mkdir(parents=True)
  source_jpeg = root / 'JPEGImages' / '2007_000032.jpg'
  with Image.open(source_jpeg) as image:
    size = image.size
  for new_id in ('2008_900001', '2008_900002'):
    (root / 'JPEGImages' / f'{new_id}.jpg').write_bytes(
        source_jpeg.read_bytes())
    mask = np.zeros(size[::-1], np.uint8)
    mask[10:50, 20:80] = 7
    _save_sbd_mat(sbd / 'cls' / f'{new_id}.mat', mask)
  for voc_id in ('2007_000039', '2007_000033'):  # VOC train, VOC val.
    with Image.open(root / 'SegmentationClass' / f'{voc_id}.png') as m:
      _save_sbd_mat(sbd / 'cls' / f'{voc_id}.mat', np.asarray(m))
  (sbd / 'train.txt').write_text('2007_000039\n2007_000033\n2008_900001\n')
  (sbd / 'val.txt').write_text('2008_900002\n')
  config = voc_config(tmp_path / 'data', voc_copy, dataset='voc2012_aug')
  builder = pipeline.prepare_dataset(config.data)
  assert _split_sizes(builder) == {'train': TRAIN + 2, 'validation': VAL}
  source = pipeline.data_source(config.data, 'train')
  names = {source[i]['file_name'].decode(): i for i in range(len(source))}
  assert '2007_000033.jpg' not in names  # VOC val never enters train_aug.
  sbd_mask = np.asarray(Image.open(io.BytesIO(
      source[names['2008_900001.jpg']]['segmentation_mask'])))
  assert set(np.unique(sbd_mask)) == {0, 7}


def test_unknown_split_is_named(voc_prepared):
  config, _ = voc_prepared
  with pytest.raises(DatasetError, match="no split 'test'.*train, validation"):
    pipeline.data_source(config.data, 'test')


def test_builder_is_a_registered_tfds_builder():
  assert 'voc_segmentation' in tfds.list_builders()
  assert 'deeplab_demo_shapes' in tfds.list_builders()
