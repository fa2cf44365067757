"""The seed Keras project's exact model and hyper-parameters.

Every key of its JSON config (see README, "Config keys") mapped here:
Dense Prediction Cell head from `encoder_middle_conf`, simple upsampling (a
3x3 bias-free classifier, then bilinear upsampling), Adam (lr 1e-4, b1 0.5,
b2 0.99), batch 6, 224 crops, output stride 8, 120 epochs.

    python main.py --config=configs/voc_seed.py --workdir=runs/seed

Not run to the end here (29,280 steps; 2 CPU cores: 1.9 s a step of 6 at
224). The seed project published no mIoU for this recipe.
"""

from deeplab_jax.config import SEED_DPC_BRANCHES, default_config


def get_config():
  config = default_config()
  m = config.model
  m.num_classes = 21  # num_classes
  m.output_stride = 8  # output_stride
  m.backbone.depth_multiplier = 1.0  # mv2_depth_multiplier
  m.backbone.channel_rounding = 'keras'  # The seed's keras.applications base.
  m.backbone.bn_momentum = 0.999  # Keras MobileNetV2's own BatchNorm.
  m.backbone.bn_epsilon = 1e-3
  m.bn_momentum = 0.1  # bn_momentum (Keras/Flax semantics: weight of old).
  m.bn_epsilon = 1e-3  # Keras default.
  m.bn_scale = True  # bn_scale
  m.head.type = 'dpc'
  m.head.dpc_branches = [dict(b) for b in SEED_DPC_BRANCHES]  # encoder_middle_conf
  m.head.conv_rate_multiplier = 2  # conv_rate_multiplier
  m.head.separable_depth_multiplier = 1  # depth_multiplier
  m.head.channels = 256  # reduction_size
  m.head.projection_channels = 256  # concat_channels
  m.head.dropout_rate = 0.1  # dropout_rate
  m.head.dropout_on_concat = True  # The seed drops out before and after
  m.head.dropout_on_projection = True  # the concat projection.
  m.decoder.type = 'upsample'  # "simple upsampling"
  m.classifier_kernel_size = 3
  m.classifier_use_bias = False

  config.data.dataset = 'voc2012'
  config.data.crop_size = 224  # image_size

  t = config.train
  t.batch_size = 6  # batch_size
  t.num_epochs = 120.0  # epochs
  t.optimizer = 'adam'
  t.learning_rate = 1e-4  # lr
  t.adam_b1 = 0.5  # beta_1
  t.adam_b2 = 0.99  # beta_2
  t.adam_eps = 1e-7  # Keras default.
  t.lr_schedule = 'inverse_time'
  t.inverse_time_decay = 0.0  # decay
  t.reduce_on_plateau_factor = 0.99999  # reduce_lr_factor
  t.reduce_on_plateau_patience = 5  # Keras ReduceLROnPlateau(patience=5),
  t.reduce_on_plateau_accumulation_steps = 244  # on the epoch loss (1464/6).
  t.bias_lr_multiplier = 1.0  # Keras has no bias multiplier.
  t.weight_decay = 4e-5  # weight_decay

  config.eval.output_stride = 8
  config.eval.crop_size = 224
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
