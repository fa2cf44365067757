"""configs/demo.py with the toy backbone and a small head: the config the
fault-injection tests start trainers with (`--config=` this file).

Loading it registers the backbone in the trainer's process, as a user's
own config file can register theirs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import demo
from deeplab_jax.models import backbones
from tests.helpers import toy_backbone


def get_config():
  toy_backbone.register()
  config = demo.get_config()
  config.model.backbone = backbones.backbone_config('toy')
  config.model.head.channels = 8
  config.model.head.projection_channels = 8
  config.model.decoder.channels = 8
  config.model.decoder.low_level_channels = 8
  return config
