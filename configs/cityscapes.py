"""DeepLabV3+ / MobileNetV2 on Cityscapes (gtFine, 19 train classes).

The reference Cityscapes recipe (research/deeplab g3doc/cityscapes.md):
769x769 crops, output stride 16 to train and 8 to evaluate, batch 8, poly
learning rate 0.01, ASPP 6/12/18 with the decoder; whole 1024x2048 images
are evaluated (a 1025x2049 canvas; eval.mode='slide' tiles them).

    python main.py --config=configs/cityscapes.py --mode=prepare --config.data.manual_dir=DIR
    python main.py --config=configs/cityscapes.py --workdir=runs/cityscapes

DIR holds leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (a free
registration at cityscapes-dataset.com), or their extracted folders. Not
run to the end here (the files and a GPU; 2 CPU cores: 9.1 s a step of
4). 2.73 M parameters.
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
