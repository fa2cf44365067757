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
from tests.helpers import toy_backbone


def get_config():
  toy_backbone.register()
  return toy_backbone.use_toy_model(demo.get_config())
