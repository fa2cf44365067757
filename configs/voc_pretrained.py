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

from deeplab_jax.weights.pretrained import config_for


def get_config(name: str = 'mnv2_dm05_pascal_float_257'):
  return config_for(name)
