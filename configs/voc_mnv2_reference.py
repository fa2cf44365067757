"""The reference DeepLab MobileNetV2 model-zoo architecture.

No atrous branches (image pooling + 1x1 only) and no decoder: the network of
the published `deeplabv3_mnv2_pascal_*` checkpoints (75.3% val mIoU for
train_aug, evaluated at output stride 8, single scale).

    python main.py --config=configs/voc_mnv2_reference.py --workdir=runs/mnv2

Not run to the end here (2 CPU cores: 2.3 s a step of 4). The published
weights of this network load and evaluate through
configs/voc_pretrained.py.
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
