"""The official DeepLab MobileNetV2 PASCAL models, imported.

One config per published model, chosen by name after a colon:

    python main.py --config=configs/voc_pretrained.py:mnv2_dm05_pascal_float_257 \
        --workdir=runs/pretrained --mode=predict --images=DIR
    python main.py --config=configs/voc_pretrained.py:mnv2_pascal_train_aug \
        --workdir=runs/pretrained --mode=eval

Names (deeplab_jax/weights/pretrained.py): mnv2_dm05_pascal_float_257,
mnv2_pascal_quant_513, mnv2_dm05_pascal_quant_513, mnv2_pascal_train_aug,
mnv2_pascal_trainval, mnv2_dm05_pascal_trainaug. The weights are downloaded
once; --config.train.init_from=PATH points at a local copy instead.
"""

from deeplab_jax.config import default_config
from deeplab_jax.weights.pretrained import MODELS


def get_config(name: str = 'mnv2_dm05_pascal_float_257'):
  if name not in MODELS:
    raise ValueError(f'Unknown pretrained model {name!r}: use one of '
                     f'{", ".join(MODELS)}.')
  entry = MODELS[name]
  config = default_config()
  config.data.dataset = 'voc2012'
  m = config.model
  m.backbone.depth_multiplier = entry.depth_multiplier
  m.backbone.channel_rounding = 'deeplab'
  m.head.atrous_rates = ()  # The published MobileNetV2 head.
  m.decoder.type = 'upsample'
  config.train.init_from = name
  config.train.init_from_scope = 'model'
  e = config.eval
  e.output_stride = entry.output_stride
  e.crop_size = entry.input_size
  # TFLite exports have a fixed input: images are resized to fit it.
  e.resize_to_crop = entry.format == 'tflite'
  e.scales = (1.0,)
  e.flip = False
  return config
