"""The reference DeepLab MobileNetV2 model-zoo architecture.

No atrous branches (image pooling + 1x1 only) and no decoder: the network of
the published `deeplabv3_mnv2_pascal_*` checkpoints (75.3% val mIoU for
train_aug, evaluated at output stride 8, single scale).

    python main.py --config=configs/voc_mnv2_reference.py --workdir=runs/mnv2

Measured here (2 CPU cores, no GPU; `python benchmarks/train_step.py
--config=configs/voc_mnv2_reference.py --batch_size=4`, 2026-11-27;
BatchNorm frozen below 12 images a device):
2.29 s/step at batch 4 (1.75 images/s) after 11.9 s of compiling and the
first step (5.7 s/step before 1x1 convs became matrix products on CPU). The
published weights of this network load and evaluate through
configs/voc_pretrained.py (sample mIoU there).
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.model.head.atrous_rates = ()
  config.model.decoder.type = 'upsample'
  config.data.dataset = 'voc2012_aug'
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
