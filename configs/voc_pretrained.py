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

Measured here (2 CPU cores, no GPU; --mode=eval's code on the 32 VOC 2012
images of ../shared/data, a "sample mIoU": 26 of them are VOC train images
the models trained on, so the 6 val images are the honest figure):

  name                        sample mIoU val (6) / all 32   eval time (32)
  mnv2_dm05_pascal_float_257  60.67% / 49.32%                18.5 s
  mnv2_pascal_quant_513       77.85% / 82.70%                47.3 s
  mnv2_dm05_pascal_quant_513  72.08% / 71.99%                43.2 s

The zoo TF checkpoints (mnv2_pascal_train_aug, mnv2_pascal_trainval,
mnv2_dm05_pascal_trainaug) need the download and were not measured here;
the zoo reports 75.32%, 77.33% (test) and 70.19% val mIoU.
"""

from deeplab_jax.weights.pretrained import config_for


def get_config(name: str = 'mnv2_dm05_pascal_float_257'):
  return config_for(name)
