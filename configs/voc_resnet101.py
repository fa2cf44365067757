"""DeepLabV3+ / ResNet-101 (v1, beta stem) on PASCAL VOC 2012: as
configs/voc_resnet50.py with 23 units in block 3, initialised from the zoo's
`resnet_v1_101_beta_imagenet` (477 MB, downloaded once).

    python main.py --config=configs/voc_resnet101.py --workdir=runs/r101

Not run to the end here (a GPU and the download; 2 CPU cores: 21.7 s a
step of 4). 45.9 M parameters. Keras's ImageNet ResNet101:
--config.model.backbone.stem=7x7 --config.model.backbone.layout=keras
--config.train.init_from=keras_imagenet.
"""

from deeplab_jax.config import default_config
from deeplab_jax.models import backbones


def get_config():
  config = default_config()
  config.data.dataset = 'voc2012_aug'
  config.model.backbone = backbones.backbone_config('resnet_v1')
  config.model.backbone.depth = 101
  config.model.backbone.stem = 'beta'
  config.train.init_from = 'resnet_v1_101_beta_imagenet'
  return config
