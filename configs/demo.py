"""The demo: train and evaluate on the built-in generated dataset.

Runs on a laptop CPU in a few minutes with nothing to download, then writes
eval/metrics.json, eval/confusion_matrix.png and eval/images/ in the workdir:

    python main.py --config=configs/demo.py --workdir=runs/demo
    python main.py --config=configs/demo.py --workdir=runs/demo --mode=predict --images=DIR

Measured here (2 CPU cores, no GPU), on the current code, `main.py` as
above with the dataset already generated and an empty compilation cache,
2026-11-27: 3 min 0 s end to end (7.0 steps/s at the end), eval mIoU
0.8166, pixel accuracy 0.9577, the eval 7.6 s (2.4 s compiling). Before
the classifier's kernel gradient became a product (its float rounding
changed): 3 min 21 s (6.9 steps/s), mIoU 0.7811, pixel accuracy 0.9479, the
eval 7.5 s (2.5 s compiling); 6.9 s from the trainer's start to its first
step. Earlier that day, before the 1x1
convs' custom kernel gradient (`layers.pointwise_dot`, the same values
within 3e-8 a step) and with the initial state already built by one
compiled program: 3 min 11 s (6.9 steps/s), mIoU 0.8485, pixel accuracy
0.9645, the eval 6.7 s (2.2 s compiling), 7.6 s to the first step. The code
before both, that hour: 3 min 4 s (7.0 steps/s; the faster steps outweighed
the start), mIoU 0.8760, pixel accuracy 0.9722, 13.8 s to the first step
(its initialisers ran eagerly; the initial weights differ from theirs by
float rounding, at most 1.8e-7). Earlier that day, a slow hour of this
machine, on the code before: 3 min 51 s (5.5 steps/s), eval 8.1 s (2.6 s
compiling). Earlier (the README's command on a fresh machine, the dataset
generated in the run, a fast hour, before the stem change): 3.0 min end to
end (7.4 steps/s at the end), eval mIoU 0.8645, pixel accuracy 0.9679 on
the 128 validation scenes, the eval itself 6.3 s (1.8 s of it compiling;
BatchNorm folded for eval); in a slower hour, dataset already generated:
4.0 min (5.5 steps/s), mIoU 0.8199, the eval 7.4 s. Before the
gathered-rows resize and the once-per-image image-pooling projection: 4.6
min, mIoU 0.7643; before 1x1 convs became matrix products on CPU: 5.5 min,
mIoU 0.8069. Generating the dataset the first time adds about 8 s. Training
is deterministic for a given machine and versions, but this small run's
mIoU moves by several points with float rounding (the same earlier code
gave 0.8680 in another environment): read it as "the pipeline learns", not
as a benchmark. Evaluating again with one Evaluator (earlier code): 4.0 s
the first time (2.1 s of it compiling), 1.0 s the second (no compilation).
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
