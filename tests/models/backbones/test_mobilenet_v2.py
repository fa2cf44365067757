"""MobileNetV2: widths, atrous conversion, parameter count.

Parity with keras.applications.MobileNetV2 (alphas 0.35, 0.5, 1.0, 1.4) is
tested through the weight mapping in tests/weights/test_keras.py.
"""


from flax import nnx

from deeplab_jax.models.backbones.mobilenet_v2 import (MobileNetV2, atrous_schedule,
                                             mobilenet_v2_layout)
from deeplab_jax.models.summary import parameter_counts
from tests.conftest import random_keras_mobilenet_v2


def _stage_widths(blocks):
  # Last block of each stage of V2: indices 0, 2, 5, 9, 12, 15, 16.
  return [blocks[i].out_channels for i in (0, 2, 5, 9, 12, 15, 16)]


def test_deeplab_rounding_at_dm05_matches_official_model():
  stem, _, blocks = mobilenet_v2_layout(0.5, 'deeplab')
  # ../shared/models/README.md: 16, 8, 12, 16, 32, 48, 80, 160.
  assert [stem] + _stage_widths(blocks) == [16, 8, 12, 16, 32, 48, 80, 160]
  expansions = [b.expanded_channels for b in blocks]
  assert expansions == [None, 48, 72, 72, 96, 96, 96] + [192] * 4 + [
      288] * 3 + [480] * 3


def test_keras_rounding_rounds_every_width_to_multiples_of_8():
  stem, _, blocks = mobilenet_v2_layout(0.5, 'keras')
  assert [stem] + _stage_widths(blocks) == [16, 8, 16, 16, 32, 48, 80, 160]
  stem, _, blocks = mobilenet_v2_layout(0.35, 'keras')
  assert all(b.out_channels % 8 == 0 for b in blocks) and stem == 16


def test_rounding_rules_agree_at_dm1():
  assert mobilenet_v2_layout(1.0, 'deeplab') == mobilenet_v2_layout(
      1.0, 'keras')
  stem, _, blocks = mobilenet_v2_layout(1.0, 'deeplab')
  assert [stem] + _stage_widths(blocks) == [32, 16, 24, 32, 64, 96, 160, 320]


def test_atrous_schedule_follows_slim_rule():
  strides = [2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
  assert atrous_schedule(strides, 32) == [(s, 1) for s in strides]
  os8 = atrous_schedule(strides, 8)
  # Stem and blocks 0-5 unchanged (257 -> 129 -> 65 -> 33); block 6 (stride
  # 2) runs at stride 1, rate 1; blocks 7-13 rate 2 (13 is the nominal
  # stride-2 one); 14-16 rate 4.
  assert os8[:7] == [(s, 1) for s in strides[:7]]
  assert os8[7] == (1, 1)
  assert os8[8:15] == [(1, 2)] * 7
  assert os8[15:] == [(1, 4)] * 3
  os16 = atrous_schedule(strides, 16)
  assert os16[14] == (1, 1) and os16[15:] == [(1, 2)] * 3


def test_residuals_only_where_shape_is_kept():
  _, _, blocks = mobilenet_v2_layout(1.0, 'deeplab', output_stride=8)
  residual = [i for i, b in enumerate(blocks) if b.residual]
  # README: ADD in blocks 2, 4, 5, 7, 8, 9, 11, 12, 14, 15 (block 6 runs at
  # stride 1 at OS 8 but changes width, so it gets none).
  assert residual == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]


def test_backbone_parameter_count_equals_keras_up_to_block_16():
  backbone = MobileNetV2(depth_multiplier=1.0, output_stride=16,
                         rngs=nnx.Rngs(0))
  counts = parameter_counts(backbone, depth=0)['']
  assert counts['params'] + counts['batch_stats'] == 1_843_264
  keras_model = random_keras_mobilenet_v2(1.0, 64)
  assert keras_model.count_params() == 2_257_984
  # DeepLab stops at block_16_project: drop Keras's Conv_1 (320 -> 1280) and
  # its BatchNorm.
  unused = sum(keras_model.get_layer(n).count_params()
               for n in ('Conv_1', 'Conv_1_bn'))
  assert keras_model.count_params() - unused == 1_843_264
