"""DeepLabV3+ / MobileNetV2 on ADE20K SceneParsing (150 classes).

513x513 crops, 150 classes ("other", id 0, is ignored: the reference
`reduce_zero_label`), output stride 16 to train and 8 to evaluate, batch 16,
poly learning rate 0.01 for 150,000 steps as the reference ADE20K recipe
(research/deeplab g3doc/ade20k.md); evaluation single scale.

    python main.py --config=configs/ade20k.py --mode=prepare     # downloads 923 MB
    python main.py --config=configs/ade20k.py --workdir=runs/ade20k

Offline: --config.data.manual_dir=DIR with ADEChallengeData2016.zip (or its
extracted folder).

Measured here (2 CPU cores, no GPU): --mode=summary gives 2,758,726
parameters (plus 38,784 BatchNorm statistics); a 2-step run on files the
tests write in the official layout trains and saves
(tests/data/test_cityscapes_ade20k_builders.py). No real training: the
archive cannot be downloaded here and a full run needs a GPU.
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.data.dataset = 'ade20k'
  config.model.num_classes = 150
  config.data.crop_size = 513
  config.train.learning_rate = 0.01
  config.train.num_steps = 150000
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
