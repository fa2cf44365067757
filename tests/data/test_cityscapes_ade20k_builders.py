"""Cityscapes and ADE20K from files the tests write in the official layouts
(real VOC photos stand in; the archives cannot be downloaded here)."""

import json
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.config import default_config
from deeplab_jax.data import augment, datasets, pipeline
from deeplab_jax.errors import DatasetError
from tests.conftest import train_two_steps

REPO = pathlib.Path(__file__).resolve().parents[2]

# Cityscapes' labels.py, written out independently: label id -> train id.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                        21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                        28: 15, 31: 16, 32: 17, 33: 18}


def _photos(voc_sample_dir, count):
  jpegs = sorted((voc_sample_dir / 'VOC2012' / 'JPEGImages').glob('*.jpg'))
  return jpegs[:count]


def _open_half(photo):
  """The photo at half size (at most 250 x 250): what is tested is the
  files' layout and labels, and small images keep the 2-step run short."""
  image = Image.open(photo).convert('RGB')
  return image.resize((image.width // 2, image.height // 2))


def _random_ids(shape, high, seed):
  return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint8)


def write_cityscapes(voc_sample_dir, root, zipped=False):
  """leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png
  and gtFine/.../<same>_gtFine_labelIds.png holding ids 0..33."""
  masks = {}
  for n, photo in enumerate(_photos(voc_sample_dir, 5)):
    split, city = ('train', 'aachen') if n < 3 else ('val', 'frankfurt')
    stem = f'{city}_000000_{n:06d}'
    image = _open_half(photo)
    ids = _random_ids((image.height, image.width), 34, n)
    for kind, name, picture in (
        ('leftImg8bit', f'{stem}_leftImg8bit.png', image),
        ('gtFine', f'{stem}_gtFine_labelIds.png', Image.fromarray(ids))):
      path = root / kind / split / city / name
      path.parent.mkdir(parents=True, exist_ok=True)
      picture.save(path)
    masks[f'{stem}_leftImg8bit.png'] = ids
  if zipped:  # The official archives, holding the same folders.
    for kind, name in (('leftImg8bit', 'leftImg8bit_trainvaltest.zip'),
                       ('gtFine', 'gtFine_trainvaltest.zip')):
      with zipfile.ZipFile(root / name, 'w') as archive:
        for path in sorted((root / kind).rglob('*.png')):
          archive.write(path, path.relative_to(root))
      for path in sorted((root / kind).rglob('*'), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
      (root / kind).rmdir()
  return masks


def write_ade20k(voc_sample_dir, root):
  """ADEChallengeData2016/{images,annotations}/{training,validation}/."""
  masks = {}
  for n, photo in enumerate(_photos(voc_sample_dir, 5)):
    split = 'training' if n < 3 else 'validation'
    stem = f'ADE_{"train" if n < 3 else "val"}_{n:08d}'
    base = root / 'ADEChallengeData2016'
    (base / 'images' / split).mkdir(parents=True, exist_ok=True)
    (base / 'annotations' / split).mkdir(parents=True, exist_ok=True)
    image = _open_half(photo)
    image.save(base / 'images' / split / f'{stem}.jpg')
    ids = _random_ids((image.height, image.width), 151, n)
    Image.fromarray(ids).save(base / 'annotations' / split / f'{stem}.png')
    masks[f'{stem}.jpg'] = ids
  return masks


def _config(dataset, data_dir, manual_dir):
  config = default_config()
  config.data.dataset = dataset
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir)
  config.data.num_workers = 0
  return config


def _read_back(config, split):
  """{file name: class ids as the pipeline reads them}."""
  spec = datasets.dataset_spec(config.data)
  source = pipeline.data_source(config.data, split)
  out = {}
  for i in range(len(source)):
    name = source[i]['file_name']
    name = name.decode() if isinstance(name, bytes) else name
    out[name] = spec.map_labels(augment.decode_mask(
        source[i]['segmentation_mask']))
  return out


@pytest.mark.parametrize('zipped', [False, True])
def test_cityscapes_label_ids_become_train_ids(voc_sample_dir, tmp_path,
                                               zipped):
  masks = write_cityscapes(voc_sample_dir, tmp_path / 'manual', zipped)
  config = _config('cityscapes', tmp_path / 'tfds', tmp_path / 'manual')
  builder = pipeline.prepare_dataset(config.data)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 3, 'validation': 2}
  read = {**_read_back(config, 'train'), **_read_back(config, 'validation')}
  assert read.keys() == masks.keys()
  for name, ids in masks.items():
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(i, 255))(ids)
    np.testing.assert_array_equal(read[name], expected)  # Pixel by pixel.
  spec = datasets.dataset_spec('cityscapes')
  assert spec.num_classes == 19 and spec.class_names[13] == 'car'
  assert tuple(spec.palette[0]) == (128, 64, 128)  # road


def test_cityscapes_without_its_files_says_where_to_get_them(tmp_path):
  (tmp_path / 'manual').mkdir()
  config = _config('cityscapes', tmp_path / 'tfds', tmp_path / 'manual')
  with pytest.raises(DatasetError, match='cityscapes-dataset.com'):
    pipeline.prepare_dataset(config.data)


def test_ade20k_reduces_the_zero_label(voc_sample_dir, tmp_path):
  masks = write_ade20k(voc_sample_dir, tmp_path / 'manual')
  config = _config('ade20k', tmp_path / 'tfds', tmp_path / 'manual')
  builder = pipeline.prepare_dataset(config.data)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 3, 'validation': 2}
  read = {**_read_back(config, 'train'), **_read_back(config, 'validation')}
  for name, ids in masks.items():
    expected = np.where(ids == 0, 255, ids.astype(np.int64) - 1)
    np.testing.assert_array_equal(read[name], expected)
  spec = datasets.dataset_spec('ade20k')
  assert spec.num_classes == 150
  assert spec.class_names[0] == 'wall' and spec.class_names[-1] == 'flag'


@pytest.mark.parametrize('dataset', ['cityscapes', 'ade20k'])
def test_summary_and_two_training_steps(dataset, voc_sample_dir, tmp_path,
                                        capsys, toy_model):
  """The shipped config's summary, then two steps and the final eval of its
  data, classes and eval settings (a toy backbone: the data is tested)."""
  write = write_cityscapes if dataset == 'cityscapes' else write_ade20k
  write(voc_sample_dir, tmp_path / 'manual')
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  from deeplab_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  config = load_config_file(str(REPO / 'configs' / f'{dataset}.py'))
  cli.run(config, mode='summary')
  assert 'total' in capsys.readouterr().out
  config = toy_model(config)
  config.data.manual_dir = str(tmp_path / 'manual')
  config.eval.crop_size = 257  # The photos are at most 250 x 250.
  train_two_steps(config, tmp_path / 'tfds', tmp_path / 'run', crop_size=65)
  assert 'Trained to step 2' in capsys.readouterr().out
  # The eval at step 2 scored the val files over the dataset's classes.
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'metrics.json'
                        ).read_text())
  assert metrics['images'] == 2
  assert len(metrics['per_class_iou']) == config.model.num_classes
