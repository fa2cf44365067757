"""The reference DeepLab's TF variable scopes, mapped onto our modules.

Both the TFLite exports and the model-zoo checkpoints name their weights by
these scopes: `MobilenetV2/Conv`, `MobilenetV2/expanded_conv[_N]/{expand,
depthwise,project}`, `image_pooling`, `aspp0`, `aspp<i>_{depthwise,pointwise}`,
`concat_projection`, `decoder/feature_projection0`,
`decoder/decoder_conv<j>_{depthwise,pointwise}` and `logits/semantic`.
"""

from __future__ import annotations

from flax import nnx

from deeplab_jax.errors import WeightImportError
from deeplab_jax.models.deeplab import DeepLab
from deeplab_jax.models.heads import ASPP
from deeplab_jax.models.layers import ConvBN, SeparableConvBN

LOGITS_SCOPE = 'logits/semantic'


def _separable(scopes: dict, prefix: str, layer: SeparableConvBN) -> None:
  scopes[f'{prefix}_depthwise'] = layer.depthwise
  scopes[f'{prefix}_pointwise'] = layer.pointwise


def scope_map(model: DeepLab) -> dict[str, ConvBN | nnx.Conv]:
  """{TF scope: our conv+BN module (or the classifier conv)}."""
  scopes: dict[str, ConvBN | nnx.Conv] = {
      'MobilenetV2/Conv': model.backbone.stem
  }
  for i, block in enumerate(model.backbone.blocks):
    prefix = 'MobilenetV2/expanded_conv' + (f'_{i}' if i else '')
    if block.expand is not None:
      scopes[f'{prefix}/expand'] = block.expand
    scopes[f'{prefix}/depthwise'] = block.depthwise
    scopes[f'{prefix}/project'] = block.project
  head = model.head
  if not isinstance(head, ASPP):
    raise WeightImportError(
        'The published DeepLab weights have an ASPP head; this config uses '
        f'{type(head).__name__} (config.model.head.type).')
  if head.image_pooling is not None:
    scopes['image_pooling'] = head.image_pooling
  scopes['aspp0'] = head.aspp0
  for i, branch in enumerate(head.atrous, 1):
    _separable(scopes, f'aspp{i}', branch)
  scopes['concat_projection'] = head.concat_projection
  if model.decoder is not None:
    scopes['decoder/feature_projection0'] = model.decoder.feature_projection
    _separable(scopes, 'decoder/decoder_conv0', model.decoder.decoder_conv0)
    _separable(scopes, 'decoder/decoder_conv1', model.decoder.decoder_conv1)
  scopes[LOGITS_SCOPE] = model.logits
  return scopes


def check_scopes(model_scopes, file_scopes, source: str,
                 allow_extra: bool = False) -> None:
  """WeightImportError if the file and the model hold different layers."""
  missing = [s for s in model_scopes if s not in file_scopes]
  extra = [] if allow_extra else [
      s for s in file_scopes if s not in model_scopes]
  if missing or extra:
    parts = []
    if missing:
      parts.append(f'the model has layers the file lacks: {", ".join(missing)}')
    if extra:
      parts.append(f'the file has layers the model lacks: {", ".join(extra)}')
    raise WeightImportError(
        f'{source} does not fit this model: {"; ".join(parts)}. The '
        'published MobileNetV2 models have no atrous ASPP branches and no '
        'decoder: use configs/voc_pretrained.py (or set '
        'config.model.head.atrous_rates=() and '
        "config.model.decoder.type='upsample').")
