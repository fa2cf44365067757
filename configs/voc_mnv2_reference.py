"""The reference DeepLab MobileNetV2 model-zoo architecture.

No atrous branches (image pooling + 1x1 only) and no decoder: the network of
the published `deeplabv3_mnv2_pascal_*` checkpoints (75.3% val mIoU for
train_aug, evaluated at output stride 8, single scale).
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
