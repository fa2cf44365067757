"""DeepLabV3+ / ResNet-50 (v1, beta stem) on PASCAL VOC 2012, the reference
recipe of research/deeplab for `resnet_v1_50_beta`.

ResNet v1 50 with the three-3x3-conv stem, multi_grid (1, 2, 4) in block 4,
ASPP (6, 12, 18) and the decoder on block 1's unit-2 features; initialised
from the zoo's ImageNet checkpoint (`resnet_v1_50_beta_imagenet`, 274 MB,
downloaded once). Otherwise the MobileNetV2 recipe.

    python main.py --config=configs/voc_resnet50.py --workdir=runs/r50

Not run to the end here (a GPU and the download; 2 CPU cores: 16.7 s a
step of 4). 26.9 M parameters. Keras's ImageNet ResNet50 instead:
--config.model.backbone.stem=7x7 --config.model.backbone.layout=keras
--config.train.init_from=keras_imagenet.
"""

from deeplab_jax.config import default_config
from deeplab_jax.models import backbones


def get_config():
  config = default_config()
  config.data.dataset = 'voc2012_aug'
  config.model.backbone = backbones.backbone_config('resnet_v1')
  config.model.backbone.depth = 50
  config.model.backbone.stem = 'beta'
  config.train.init_from = 'resnet_v1_50_beta_imagenet'
  return config
