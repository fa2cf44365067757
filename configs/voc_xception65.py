"""DeepLabV3+ / Xception-65 on PASCAL VOC 2012, the DeepLabV3+ paper's
network and the reference recipe (research/deeplab, `xception_65`).

Aligned Xception-65, ASPP (6, 12, 18) with separable convs, the decoder on
entry-flow block 2; initialised from the zoo's ImageNet checkpoint
(`xception_65_imagenet`, 447 MB, downloaded once); the MobileNetV2 recipe
otherwise. The zoo's train_aug model reaches 82.20% val mIoU this way
(after COCO pretraining).

    python main.py --config=configs/voc_xception65.py --workdir=runs/x65

Not run to the end here (a GPU and the download; 2 CPU cores: 21.9 s a
step of 4). 41.3 M parameters. The zoo's trained PASCAL Xception-65:
configs/voc_pretrained.py.
"""

from deeplab_jax.config import default_config
from deeplab_jax.models import backbones


def get_config():
  config = default_config()
  config.data.dataset = 'voc2012_aug'
  config.model.backbone = backbones.backbone_config('xception_65')
  config.train.init_from = 'xception_65_imagenet'
  return config
