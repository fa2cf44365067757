"""The demo: train and evaluate on the built-in generated dataset (4 classes
of shapes, 128x128 scenes), nothing to download.

    python main.py --config=configs/demo.py --workdir=runs/demo

2 CPU cores, no GPU: 2.1 min end to end with tcmalloc (1000 steps of 16,
10.3 steps/s; 2.4 min and 7.6 steps/s with glibc's malloc), eval mIoU 0.90,
pixel accuracy 0.98 on the 128 validation scenes. The mIoU of this short
run moves by several points with the machine's float rounding (0.82 on
another): it says "the pipeline learns", not more.
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.data.dataset = 'demo'  # 128x128 scenes, generated on first use.
  config.data.crop_size = 81
  config.data.min_scale = 0.75
  config.data.max_scale = 1.25
  config.data.num_workers = 1  # One core augments while the other trains.

  m = config.model
  m.num_classes = 4
  m.backbone.depth_multiplier = 0.5
  # A short run: moving statistics must follow the weights quickly.
  m.bn_momentum = 0.99
  m.backbone.bn_momentum = 0.99
  m.head.atrous_rates = ()  # Image pooling + 1x1: the feature maps are tiny.
  m.head.channels = 64
  m.head.projection_channels = 64
  m.decoder.low_level_channels = 24
  m.decoder.channels = 64

  t = config.train
  t.batch_size = 16
  t.num_steps = 1000
  t.learning_rate = 0.1
  t.warmup_steps = 50
  t.log_every_steps = 100
  t.checkpoint_every_steps = 250
  t.eval_every_steps = 1000  # Evaluate once, at the end.

  e = config.eval
  e.output_stride = 16
  e.crop_size = 129
  e.scales = (1.0,)
  e.flip = False
  e.batch_size = 16
  e.num_result_images = 12
  return config
