"""The TFDS features every segmentation builder stores, so that one pipeline
reads them all: the encoded photo, the mask of class ids (or of ids a
`DatasetSpec.label_map` maps on reading) as a grey-level PNG, and the
original file name."""

from __future__ import annotations

import tensorflow_datasets as tfds


def segmentation_features(image_encoding: str | None
                          ) -> tfds.features.FeaturesDict:
  """{'image', 'segmentation_mask', 'file_name'}; `image_encoding` 'jpeg',
  'png', or None to keep each file's own encoding."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3),
                                   encoding_format=image_encoding),
      'segmentation_mask': tfds.features.Image(shape=(None, None, 1),
                                               encoding_format='png'),
      'file_name': tfds.features.Text(),
  })
