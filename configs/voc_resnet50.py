"""DeepLabV3+ / ResNet-50 (v1, beta stem) on PASCAL VOC 2012, the reference
recipe of research/deeplab for `resnet_v1_50_beta`.

ResNet v1 50 with the three-3x3-conv stem, multi_grid (1, 2, 4) in block 4,
ASPP (6, 12, 18) and the decoder on block 1's unit-2 features; initialised
from the zoo's ImageNet checkpoint (`resnet_v1_50_beta_imagenet`, 274 MB,
downloaded once). Otherwise the MobileNetV2 recipe: SGD momentum 0.9, poly
LR 0.007, batch 16, 513 crops, OS 16 to train, OS 8 with multi-scale and
flips to evaluate.

    python main.py --config=configs/voc_resnet50.py --workdir=runs/r50
    python main.py --config=configs/voc_resnet50.py --mode=summary

Measured here (2 CPU cores, no GPU; `python benchmarks/train_step.py
--config=configs/voc_resnet50.py --batch_size=4`, 2026-11-27; BatchNorm
frozen, as the config runs it below 12 images a device): 16.7 s per train
step at batch 4, 513 crops. Beside PyTorch eager on the same network, in
another hour (`python benchmarks/compare.py --only=train_resnet50
--batch_sizes=4 --one_at_a_time`, BatchNorm on batch statistics in both;
this machine's speed varies 5-20% from hour to hour): ours 14.5 s,
PyTorch 11.8 s. 26,891,013 parameters and BatchNorm statistics
(`--mode=summary`). No full run was made here (it needs a GPU and the 274
MB download).

Keras's ImageNet ResNet50 instead (7x7 stem, Keras's stride placement):

    python main.py --config=configs/voc_resnet50.py --workdir=runs/r50k \\
        --config.model.backbone.stem=7x7 --config.model.backbone.layout=keras \\
        --config.train.init_from=keras_imagenet
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
