"""DeepLabV3+ / MobileNetV2 1.0 on PASCAL VOC 2012, the reference recipe.

ASPP (rates 6, 12, 18) + decoder; SGD momentum 0.9, poly LR 0.007 (power
0.9), weight decay 4e-5, batch 16, 513x513 crops with random scale 0.5-2.0,
output stride 16 to train and 8 to evaluate with multi-scale + flip.

    python main.py --config=configs/voc.py --mode=prepare --config.data.manual_dir=DIR
    python main.py --config=configs/voc.py --workdir=runs/voc
    python main.py --config=configs/voc.py --workdir=runs/voc --mode=eval

Not run to the end here (30,000 steps of 16 need a GPU; 2 CPU cores: 3.4 s
a step of 4). The reference reports 75.32% val mIoU for the zoo's
MobileNetV2 network without decoder (configs/voc_mnv2_reference.py).
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()  # The defaults are the reference recipe.
  # The reference trains on train_aug (VOC train + SBD, 10,582 images);
  # 'voc2012' uses the 1,464 official train images only.
  config.data.dataset = 'voc2012_aug'
  return config
