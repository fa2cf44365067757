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

`backbone='resnet50'` swaps in configs/voc_resnet50.py's backbone (ResNet
v1 50 beta in the reference layout, `ResNetV1Beta`) under the same head and
decoder.

Layout NCHW, the PyTorch default (channels-last is measured too:
`--torch_channels_last`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

LOW_LEVEL_BLOCK = 2  # Block whose depthwise output feeds the decoder.


def _conv_bn(c_in, c_out, kernel=1, *, stride=1, groups=1, dilation=1,
             relu=True):
  # Symmetric padding: the reference's explicit padding of strided convs.
  padding = dilation * (kernel - 1) // 2
  layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding,
                      groups=groups, dilation=dilation, bias=False),
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


class _Bottleneck(nn.Module):
  """ResNet v1 bottleneck as the reference and ours: the stride in the 3x3
  conv; returns (output, conv3's BN output before the sum)."""

  def __init__(self, c_in, width, stride, rate):
    super().__init__()
    c_out = 4 * width
    self.shortcut = (_conv_bn(c_in, c_out, 1, stride=stride, relu=False)
                     if c_in != c_out else None)
    self.conv1 = _conv_bn(c_in, width, 1)
    self.conv2 = _conv_bn(width, width, 3, stride=stride, dilation=rate)
    self.conv3 = _conv_bn(width, c_out, 1, relu=False)
    self.stride = stride

  def forward(self, x):
    shortcut = (self.shortcut(x) if self.shortcut is not None
                else x[:, :, ::self.stride, ::self.stride])
    residual = self.conv3(self.conv2(self.conv1(x)))
    return F.relu(shortcut + residual), residual


class ResNetV1Beta(nn.Module):
  """configs/voc_resnet50.py's backbone: the three-3x3 stem, max-pool,
  blocks 1-3 subsampling in their last unit, block 4 with multi_grid;
  returns (features, block 1 unit 2's conv3) like ours."""

  def __init__(self, depth=50, output_stride=16, multi_grid=(1, 2, 4)):
    super().__init__()
    self.stem = nn.Sequential(
        _conv_bn(3, 64, 3, stride=2), _conv_bn(64, 64, 3),
        _conv_bn(64, 128, 3), nn.MaxPool2d(3, 2, 1))
    units = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    current, rate, c_in, blocks = 4, 1, 128, []
    for b, (n, width) in enumerate(zip(units, (64, 128, 256, 512))):
      for u in range(n):
        stride = 2 if (u == n - 1 and b < 3) else 1
        if current == output_stride:
          unit_stride, unit_rate = 1, rate
          rate *= stride
        else:
          unit_stride, unit_rate = stride, 1
          current *= stride
        if b == 3:
          unit_rate *= multi_grid[u]
        blocks.append(_Bottleneck(c_in, width, unit_stride, unit_rate))
        c_in = 4 * width
    self.units = nn.ModuleList(blocks)

  def forward(self, x):
    x = self.stem(x)
    low = None
    for i, unit in enumerate(self.units):
      x, residual = unit(x)
      if i == 1:
        low = residual
    return x, low


class DeepLabV3Plus(nn.Module):
  """[N, 3, H, W] in [-1, 1] -> [N, num_classes, H, W] logits."""

  def __init__(self, num_classes: int = 21, output_stride: int = 16,
               atrous_rates=(6, 12, 18), channels: int = 256,
               low_level_channels: int = 48, dropout_rate: float = 0.1,
               backbone: str = 'mobilenet_v2'):
    super().__init__()
    if backbone == 'resnet50':
      self.backbone = ResNetV1Beta(50, output_stride)
      in_features, low_in = 2048, 256
    else:
      self.backbone = atrous_backbone(output_stride)
      in_features = 320
      # features[0] is the stem, so block i is features[i + 1]; its
      # depthwise conv is the second ConvBNReLU of `conv`.
      self._low_level_block = self.backbone[LOW_LEVEL_BLOCK + 1]
      low_in = self._low_level_block.conv[1][0].out_channels
    self.backbone_name = backbone
    multiplier = 16 // output_stride
    rates = [r * multiplier for r in atrous_rates]
    self.image_pooling = _conv_bn(in_features, channels)
    self.aspp0 = _conv_bn(in_features, channels)
    self.atrous = nn.ModuleList(_separable(in_features, channels, r)
                                for r in rates)
    self.concat_projection = _conv_bn((2 + len(rates)) * channels, channels)
    self.dropout = nn.Dropout(dropout_rate)
    self.feature_projection = _conv_bn(low_in, low_level_channels)
    self.decoder_conv0 = _separable(channels + low_level_channels, channels)
    self.decoder_conv1 = _separable(channels, channels)
    self.logits = nn.Conv2d(channels, num_classes, 1, bias=True)

  def _mobilenet_features(self, x):
    """(features, the low-level block's depthwise output), one pass and no
    forward hook: a hook breaks torch.compile's graph into one per block."""
    low = None
    for module in self.backbone:
      if module is not self._low_level_block:
        x = module(x)
        continue
      h = x
      for index, layer in enumerate(module.conv):
        h = layer(h)
        if index == 1:  # The depthwise ConvBNReLU.
          low = h
      x = x + h if module.use_res_connect else h
    return x, low

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    if self.backbone_name == 'resnet50':
      features, low = self.backbone(images)
      low_level = [low]
    else:
      features, low = self._mobilenet_features(images)
      low_level = [low]
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
