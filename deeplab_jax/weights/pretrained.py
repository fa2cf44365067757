"""`config.train.init_from`: where initial weights (weights only) come from.

A path is a checkpoint of this project (a workdir, its checkpoints/ folder or
one step's folder). `keras_imagenet` maps Keras's ImageNet MobileNetV2 into
the backbone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deeplab_jax import checkpoints


def read_init_weights(source: str, config: Any
                      ) -> dict[tuple[str, ...], np.ndarray]:
  """{('params' | 'batch_stats', module path...): array} for `source`."""
  if source == 'keras_imagenet':
    from deeplab_jax.weights import keras as keras_weights  # pylint: disable=g-import-not-at-top
    return keras_weights.imagenet_backbone_weights(config.model)
  return checkpoints.read_weights(source)
