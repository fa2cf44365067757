"""The generated demo dataset: deterministic, VOC-like, not trivial."""

import hashlib

import numpy as np

from deeplab_jax.config import default_config
from deeplab_jax.data import demo_builder, pipeline


def test_scenes_are_deterministic_by_seed():
  a = demo_builder.render_scene((0, 5))
  b = demo_builder.render_scene((0, 5))
  c = demo_builder.render_scene((0, 6))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_the_scenes_stay_the_published_ones():
  """The first 16 scenes of each split, byte for byte, as version 1.0.0
  was generated (and as they were before `_texture` computed only the
  shape's pixels): a change here changes everyone's demo dataset and
  needs a new builder version."""
  digest = hashlib.sha256()
  for split_seed in (0, 1):
    for index in range(16):
      image, mask = demo_builder.render_scene((split_seed, index))
      digest.update(image.tobytes())
      digest.update(mask.tobytes())
  assert digest.hexdigest() == (
      'b41aee264466720ea0a5af8b84e740187ec9df0d8ee6e1f7475927bb91fb93d0')


def test_every_label_boundary_is_ignore():
  for seed in range(20):
    _, mask = demo_builder.render_scene((0, seed))
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    assert (mask == 255).any() and (mask != 0).any()
    # No two different class ids touch: a 255 band always lies between.
    for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
      both = (a != 255) & (b != 255)
      assert np.all(a[both] == b[both])


def test_class_is_not_readable_from_a_pixel_colour():
  """The best colour-only classifier (a 512-bin RGB histogram per class,
  fitted on 100 scenes) is at chance on held-out scenes."""
  def pixels(indices):
    xs, ys = [], []
    for i in indices:
      image, mask = demo_builder.render_scene((0, i))
      keep = mask != 255
      xs.append(image[keep]), ys.append(mask[keep])
    return np.concatenate(xs), np.concatenate(ys)
  def bins(x):
    return (x // 32).astype(np.int64) @ np.array([64, 8, 1])
  x_train, y_train = pixels(range(100))
  x_test, y_test = pixels(range(100, 140))
  hist = np.ones((4, 512))
  np.add.at(hist, (y_train, bins(x_train)), 1)
  hist /= hist.sum(axis=1, keepdims=True)  # Equal class priors.
  predicted = np.argmax(hist[:, bins(x_test)], axis=0)
  recall = [np.mean(predicted[y_test == c] == c) for c in range(4)]
  assert np.mean(recall) < 0.35  # Chance is 0.25.


def test_demo_dataset_builds_and_feeds_the_pipeline(demo_data_dir):
  config = default_config()
  config.data.dataset = 'demo'
  config.data.data_dir = str(demo_data_dir)
  config.data.crop_size = 97
  builder = pipeline.prepare_dataset(config.data)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 1024, 'validation': 128}
  assert builder.info.metadata['class_names'] == list(
      demo_builder.CLASS_NAMES)
  batch = next(iter(pipeline.train_loader(config, batch_size=3,
                                          worker_count=0)))
  assert batch['image'].shape == (3, 97, 97, 3)
  assert set(np.unique(batch['label'])) <= {0, 1, 2, 3, 255}
  source = pipeline.data_source(config.data, 'validation')
  example = source[0]  # TFDS orders examples by a hash of their keys.
  index = int(example['file_name'].decode()[len('validation_'):-4])
  image, mask = demo_builder.render_scene((1, index))
  np.testing.assert_array_equal(
      pipeline.augment.decode_mask(example['segmentation_mask']), mask)
  np.testing.assert_array_equal(
      np.asarray(pipeline.augment.decode_image(example['image'])), image)
