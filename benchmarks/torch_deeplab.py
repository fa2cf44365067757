"""The peer: DeepLabV3+ MobileNetV2 in PyTorch eager, layer for layer ours.

Benchmark-only (torch is never a test or core dependency). The backbone is
torchvision's MobileNetV2 `features` without its last 1x1 conv (ours ends
at `expanded_conv_16`, 320 channels), made atrous the way slim and ours do
it; then the reference ASPP (image pooling, a 1x1 branch and separable
atrous 3x3 branches, concat, 1x1 projection, dropout), the DeepLabV3+
decoder (48-channel projection of block 2's depthwise output at stride 4,
two separable 3x3 convs) and a 1x1 classifier with bias. Same widths, same
strides, same rates, same BatchNorm placement and activations as
`deeplab_jax.models.create_model(default_config().model)`; both have
2,725,573 parameters (checked by hand, 2026-11-26; no test, since torch is
not a test dependency).

Layout NCHW, the PyTorch default (channels-last is measured too:
`--torch_channels_last`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

LOW_LEVEL_BLOCK = 2  # Block whose depthwise output feeds the decoder.


def _conv_bn(c_in, c_out, kernel=1, *, groups=1, dilation=1, relu=True):
  padding = dilation * (kernel - 1) // 2
  layers = [nn.Conv2d(c_in, c_out, kernel, padding=padding, groups=groups,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.0003)]
  if relu:
    layers.append(nn.ReLU(inplace=True))
  return nn.Sequential(*layers)


def _separable(c_in, c_out, dilation=1):
  """depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""
  return nn.Sequential(
      _conv_bn(c_in, c_in, 3, groups=c_in, dilation=dilation),
      _conv_bn(c_in, c_out, 1))


def atrous_backbone(output_stride: int, width_mult: float = 1.0) -> nn.Module:
  """torchvision MobileNetV2 features up to block 16, atrous past
  `output_stride`: once the running stride reaches it, a layer keeps
  stride 1, dilates by the current rate, and the rate grows by its nominal
  stride (slim's `mobilenet_base`)."""
  features = torchvision.models.mobilenet_v2(width_mult=width_mult).features
  features = features[:-1]  # Drop the 1x1 conv to 1280 (not in DeepLab).
  current, rate = 1, 1
  for module in features:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    strided = [c for c in convs if c.stride[0] > 1]
    if not strided:
      for conv in convs:
        if conv.kernel_size[0] > 1 and rate > 1:
          conv.dilation, conv.padding = (rate, rate), (rate, rate)
      continue
    conv = strided[0]
    if current == output_stride:
      conv.stride = (1, 1)
      conv.dilation, conv.padding = (rate, rate), (rate, rate)
      rate *= 2
    else:
      current *= 2
  return features


class DeepLabV3Plus(nn.Module):
  """[N, 3, H, W] in [-1, 1] -> [N, num_classes, H, W] logits."""

  def __init__(self, num_classes: int = 21, output_stride: int = 16,
               atrous_rates=(6, 12, 18), channels: int = 256,
               low_level_channels: int = 48, dropout_rate: float = 0.1):
    super().__init__()
    self.backbone = atrous_backbone(output_stride)
    multiplier = 16 // output_stride
    rates = [r * multiplier for r in atrous_rates]
    in_features = 320
    self.image_pooling = _conv_bn(in_features, channels)
    self.aspp0 = _conv_bn(in_features, channels)
    self.atrous = nn.ModuleList(_separable(in_features, channels, r)
                                for r in rates)
    self.concat_projection = _conv_bn((2 + len(rates)) * channels, channels)
    self.dropout = nn.Dropout(dropout_rate)
    # features[0] is the stem, so block i is features[i + 1]; its
    # depthwise conv is the second ConvBNReLU of `conv`.
    block = self.backbone[LOW_LEVEL_BLOCK + 1]
    self._low_level_source = block.conv[1]
    low_in = block.conv[1][0].out_channels
    self.feature_projection = _conv_bn(low_in, low_level_channels)
    self.decoder_conv0 = _separable(channels + low_level_channels, channels)
    self.decoder_conv1 = _separable(channels, channels)
    self.logits = nn.Conv2d(channels, num_classes, 1, bias=True)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    low_level = []
    hook = self._low_level_source.register_forward_hook(
        lambda module, inputs, output: low_level.append(output))
    try:
      features = self.backbone(images)
    finally:
      hook.remove()
    h, w = features.shape[2:]
    pooled = self.image_pooling(features.mean((2, 3), keepdim=True))
    branches = [F.interpolate(pooled, (h, w), mode='bilinear',
                              align_corners=True),
                self.aspp0(features)]
    branches += [branch(features) for branch in self.atrous]
    x = self.dropout(self.concat_projection(torch.cat(branches, 1)))
    low = self.feature_projection(low_level[0])
    x = F.interpolate(x, low.shape[2:], mode='bilinear', align_corners=True)
    x = self.decoder_conv1(self.decoder_conv0(torch.cat([x, low], 1)))
    logits = self.logits(x)
    return F.interpolate(logits, images.shape[2:], mode='bilinear',
                         align_corners=True)
