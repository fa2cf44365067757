"""Backbones by name: `config.model.backbone.name` -> a `Backbone` class.

Adding a backbone: a module here with a `Backbone` subclass (see `base.py`),
one line in `BACKBONES`, and its tests in `tests/models/`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from deeplab_jax.models.backbones.base import (INCEPTION_PREPROCESSING,
                                               Backbone, ConfigChecks,
                                               Preprocessing)
from deeplab_jax.models.backbones.mobilenet_v2 import MobileNetV2
from deeplab_jax.models.backbones.resnet import ResNetV1
from deeplab_jax.models.backbones.xception import Xception65
from deeplab_jax.registry import Registry

BACKBONES: Registry[type[Backbone]] = Registry(
    'backbone', 'config.model.backbone.name', {
        MobileNetV2.name: MobileNetV2,
        ResNetV1.name: ResNetV1,
        Xception65.name: Xception65,
    })


def get_backbone(name: str) -> type[Backbone]:
  """The Backbone class registered as `name` (ConfigError if none is)."""
  return BACKBONES.lookup(name)


def backbone_config(name: str) -> ml_collections.ConfigDict:
  """The `config.model.backbone` sub-dict of backbone `name`, with its
  reference defaults; assign it to switch a config to that backbone."""
  return get_backbone(name).default_config()


def preprocessing(model_config: Any) -> Preprocessing:
  """The input normalisation of `config.model`'s backbone."""
  return get_backbone(model_config.backbone.name).preprocessing(
      model_config.backbone)


__all__ = [
    'BACKBONES', 'Backbone', 'ConfigChecks', 'INCEPTION_PREPROCESSING',
    'MobileNetV2', 'Preprocessing', 'ResNetV1', 'Xception65',
    'backbone_config', 'get_backbone', 'preprocessing'
]
