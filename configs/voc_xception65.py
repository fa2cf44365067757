"""DeepLabV3+ / Xception-65 on PASCAL VOC 2012, the DeepLabV3+ paper's
network and the reference recipe (research/deeplab, `xception_65`).

Aligned Xception-65 (separable convs with BatchNorm inside, atrous exit
flow), ASPP (6, 12, 18) with separable convs, the decoder on entry-flow
block 2; initialised from the zoo's ImageNet checkpoint
(`xception_65_imagenet`, 447 MB, downloaded once). SGD momentum 0.9, poly
LR 0.007, batch 16 (BatchNorm trains from 12 images a device), 513 crops,
OS 16 to train, OS 8 with multi-scale and flips to evaluate; the zoo's
train_aug model reaches 82.20% val mIoU that way (after COCO pretraining).

    python main.py --config=configs/voc_xception65.py --workdir=runs/x65
    python main.py --config=configs/voc_xception65.py --mode=summary

Measured here (2 CPU cores, no GPU; `python benchmarks/train_step.py
--config=configs/voc_xception65.py --batch_size=4`, 2026-11-27; BatchNorm
frozen, as the config runs it below 12 images a device): 21.9 s per train
step at batch 4, 513 crops; 41,258,213 parameters and BatchNorm statistics
(`--mode=summary`). No full run was made here (GPU and the 447 MB download).

The zoo's trained PASCAL models: configs/voc_pretrained.py:
xception65_pascal_train_aug (or xception65_pascal_trainval).
"""

from deeplab_jax.config import default_config
from deeplab_jax.models import backbones


def get_config():
  config = default_config()
  config.data.dataset = 'voc2012_aug'
  config.model.backbone = backbones.backbone_config('xception_65')
  config.train.init_from = 'xception_65_imagenet'
  return config
