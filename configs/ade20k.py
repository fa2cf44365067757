"""DeepLabV3+ / MobileNetV2 on ADE20K SceneParsing (150 classes).

The reference ADE20K recipe (research/deeplab g3doc/ade20k.md): 513x513
crops, "other" (id 0) ignored, output stride 16 to train and 8 to evaluate,
batch 16, poly learning rate 0.01 for 150,000 steps; single-scale eval.

    python main.py --config=configs/ade20k.py --mode=prepare     # downloads 923 MB
    python main.py --config=configs/ade20k.py --workdir=runs/ade20k

Offline: --config.data.manual_dir=DIR with ADEChallengeData2016.zip (or its
extracted folder). Not run to the end here (the download and a GPU; 2 CPU
cores: 5.3 s a step of 4). 2.76 M parameters.
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.data.dataset = 'ade20k'
  config.model.num_classes = 150
  config.data.crop_size = 513
  config.train.learning_rate = 0.01
  config.train.num_steps = 150000
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
