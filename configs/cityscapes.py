"""DeepLabV3+ / MobileNetV2 on Cityscapes (gtFine, 19 train classes).

The reference Cityscapes recipe (tensorflow/models research/deeplab,
g3doc/cityscapes.md): 769x769 crops, output stride 16 to train and 8 to
evaluate, batch 8, poly learning rate 0.01, ASPP 6/12/18 with the
decoder; whole 1024x2048 images are evaluated (padded to 1025x2049).

    python main.py --config=configs/cityscapes.py --mode=prepare --config.data.manual_dir=DIR
    python main.py --config=configs/cityscapes.py --workdir=runs/cityscapes

DIR holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (a free
registration at cityscapes-dataset.com), or their extracted folders.
Measured here (2 CPU cores, no GPU): --mode=summary gives 2,725,059
parameters (plus 38,784 BatchNorm statistics); a 2-step run on files the
tests write in the official layout trains and saves
(tests/data/test_cityscapes_ade20k_builders.py). No real training: the
files need an account and a full run a GPU.
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.data.dataset = 'cityscapes'
  config.model.num_classes = 19
  config.data.crop_size = 769
  config.train.batch_size = 8
  config.train.learning_rate = 0.01
  config.train.num_steps = 90000
  config.eval.crop_size = 1025
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
