"""Pretrained weights: the official DeepLab PASCAL models (MobileNetV2,
Xception-65) and the zoo's ImageNet backbones (ResNet v1 beta, Xception-65).

`config.train.init_from` takes:
  * a name in MODELS or BACKBONE_CHECKPOINTS below (downloaded once into
    $DEEPLAB_JAX_CACHE, default ~/.cache/deeplab_jax, and checked against
    its sha256 where one is published);
  * a path or URL of a `.tflite` export, a TF checkpoint (prefix, folder or
    zoo `.tar.gz`), or a checkpoint folder of this project;
  * `keras_imagenet`: Keras's ImageNet MobileNetV2 or ResNet50/101 (the
    backbone only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
from absl import logging

from flax import nnx

from deeplab_jax import checkpoints
from deeplab_jax.config import default_config
from deeplab_jax.errors import WeightImportError
from deeplab_jax.models import backbones, create_model
from deeplab_jax.models.deeplab import LOGITS_TF_SCOPE
from deeplab_jax.weights import keras as keras_weights
from deeplab_jax.weights import tf_checkpoint, tflite, tree
from deeplab_jax.weights.common import check_filled


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """An official model: where it is, and the facts of its architecture."""
  url: str
  format: str  # 'tflite' | 'tf_checkpoint'
  depth_multiplier: float
  output_stride: int  # The stride it is evaluated at.
  input_size: int  # Fixed input of the export (TFLite), or the eval crop.
  sha256: str | None
  source: str
  zoo_miou: str  # As published.
  backbone: str = 'mobilenet_v2'
  # The published evaluation protocol.
  eval_scales: tuple[float, ...] = (1.0,)
  eval_flip: bool = False


@dataclasses.dataclass(frozen=True)
class BackboneCheckpoint:
  """An ImageNet-pretrained backbone of the DeepLab zoo, for
  `config.train.init_from` (the backbone only; the head, decoder and
  classifier keep their initialisation)."""
  url: str
  backbone: str  # config.model.backbone.name it fits.
  settings: tuple[tuple[str, Any], ...]  # Backbone keys it needs.
  source: str


_ZOO = 'http://download.tensorflow.org/models/'
_CORAL = ('https://github.com/google-coral/test_data/raw/'
          '104342d2d3480b3e66203073dac24f4e2dbb4c41/')

MODELS = {
    'mnv2_dm05_pascal_float_257': Pretrained(
        url=('https://storage.googleapis.com/download.tensorflow.org/models/'
             'tflite/gpu/deeplabv3_257_mv_gpu.tflite'),
        format='tflite', depth_multiplier=0.5, output_stride=8,
        input_size=257,
        sha256=('68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db71'
                '7c933c6'),
        source='TFLite GPU-delegate sample (float32, logits)',
        zoo_miou='71.83% (dm05 trainval, test set; 70.19% trainaug val)'),
    'mnv2_pascal_quant_513': Pretrained(
        url=_CORAL + 'deeplabv3_mnv2_pascal_quant.tflite', format='tflite',
        depth_multiplier=1.0, output_stride=16, input_size=513,
        sha256=('350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1'
                'f249398'),
        source='Coral test_data (uint8, quantisation-aware trained)',
        zoo_miou='75.32% (train_aug 8-bit, val)'),
    'mnv2_dm05_pascal_quant_513': Pretrained(
        url=_CORAL + 'deeplabv3_mnv2_dm05_pascal_quant.tflite',
        format='tflite', depth_multiplier=0.5, output_stride=16,
        input_size=513,
        sha256=('0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861'
                '366d48b'),
        source='Coral test_data (uint8, quantisation-aware trained)',
        zoo_miou='70.19% (dm05 train_aug, val)'),
    'mnv2_pascal_train_aug': Pretrained(
        url=_ZOO + 'deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz',
        format='tf_checkpoint', depth_multiplier=1.0, output_stride=8,
        input_size=513, sha256=None,
        source='DeepLab model zoo (TF checkpoint)',
        zoo_miou='75.32% (val, OS 8)'),
    'mnv2_pascal_trainval': Pretrained(
        url=_ZOO + 'deeplabv3_mnv2_pascal_trainval_2018_01_29.tar.gz',
        format='tf_checkpoint', depth_multiplier=1.0, output_stride=8,
        input_size=513, sha256=None,
        source='DeepLab model zoo (TF checkpoint)',
        zoo_miou='77.33% (test, OS 8; val images were trained on)'),
    'mnv2_dm05_pascal_trainaug': Pretrained(
        url=_ZOO + 'deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz',
        format='tf_checkpoint', depth_multiplier=0.5, output_stride=16,
        input_size=513, sha256=None,
        source='DeepLab model zoo (TF checkpoint)',
        zoo_miou='70.19% (val, OS 16)'),
    # The DeepLabV3+ paper's Xception-65 (ASPP 6/12/18 at OS 16, decoder),
    # pretrained on ImageNet and COCO; zoo figures use OS 8, scales
    # 0.5:0.25:1.75 and flips.
    'xception65_pascal_train_aug': Pretrained(
        url=_ZOO + 'deeplabv3_pascal_train_aug_2018_01_04.tar.gz',
        format='tf_checkpoint', depth_multiplier=1.0, output_stride=8,
        input_size=513, sha256=None,
        source='DeepLab model zoo (TF checkpoint)',
        zoo_miou='82.20% (val, OS 8, multi-scale + flip)',
        backbone='xception_65',
        eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), eval_flip=True),
    'xception65_pascal_trainval': Pretrained(
        url=_ZOO + 'deeplabv3_pascal_trainval_2018_01_04.tar.gz',
        format='tf_checkpoint', depth_multiplier=1.0, output_stride=8,
        input_size=513, sha256=None,
        source='DeepLab model zoo (TF checkpoint)',
        zoo_miou='87.80% (test, OS 8, multi-scale + flip; val was trained on)',
        backbone='xception_65',
        eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), eval_flip=True),
}

# The zoo's ImageNet checkpoints of the backbones (model_zoo.md,
# "ImageNet pretrained checkpoints").
BACKBONE_CHECKPOINTS = {
    'resnet_v1_50_beta_imagenet': BackboneCheckpoint(
        url=_ZOO + 'resnet_v1_50_2018_05_04.tar.gz', backbone='resnet_v1',
        settings=(('depth', 50), ('stem', 'beta'), ('layout', 'reference')),
        source='DeepLab model zoo, resnet_v1_50_beta ImageNet (274 MB)'),
    'resnet_v1_101_beta_imagenet': BackboneCheckpoint(
        url=_ZOO + 'resnet_v1_101_2018_05_04.tar.gz', backbone='resnet_v1',
        settings=(('depth', 101), ('stem', 'beta'), ('layout', 'reference')),
        source='DeepLab model zoo, resnet_v1_101_beta ImageNet (477 MB)'),
    'xception_65_imagenet': BackboneCheckpoint(
        url=_ZOO + 'deeplabv3_xception_2018_01_04.tar.gz',
        backbone='xception_65', settings=(),
        source='DeepLab model zoo, xception_65 ImageNet (447 MB)'),
}


def _check_backbone_checkpoint(name: str, model_config: Any) -> None:
  entry = BACKBONE_CHECKPOINTS[name]
  b = model_config.backbone
  wrong = [f'{key}={value!r}' for key, value in entry.settings
           if b.get(key) != value]
  if b.name != entry.backbone or wrong:
    needs = ', '.join([f'name={entry.backbone!r}'] + [
        f'{k}={v!r}' for k, v in entry.settings])
    raise WeightImportError(
        f'{name} is a {entry.backbone} checkpoint for config.model.backbone '
        f'with {needs}; this config has name={b.name!r}'
        + (f' and needs {", ".join(wrong)}' if wrong else '') +
        ': use its config (configs/voc_resnet*.py, configs/voc_xception65.py)'
        ' or set those keys.')


def config_for(name: str):
  """The full config of a published model (architecture, eval protocol,
  init_from), as `configs/voc_pretrained.py:NAME` gives it."""
  if name not in MODELS:
    raise WeightImportError(f'Unknown pretrained model {name!r}: use one of '
                            f'{", ".join(MODELS)}.')
  entry = MODELS[name]
  config = default_config()
  config.data.dataset = 'voc2012'
  m = config.model
  if entry.backbone == 'mobilenet_v2':
    m.backbone.depth_multiplier = entry.depth_multiplier
    m.backbone.channel_rounding = 'deeplab'
    m.head.atrous_rates = ()  # The published MobileNetV2 head.
    m.decoder.type = 'upsample'
  else:  # Xception-65: the DeepLabV3+ defaults (ASPP 6/12/18, decoder).
    m.backbone = backbones.backbone_config(entry.backbone)
  config.train.init_from = name
  config.train.init_from_scope = 'model'
  e = config.eval
  e.output_stride = entry.output_stride
  e.crop_size = entry.input_size
  # TFLite exports have a fixed input: images are resized to fit it, as
  # the official demos feed them.
  e.input_scale = 'fit' if entry.format == 'tflite' else 'native'
  e.scales = entry.eval_scales
  e.flip = entry.eval_flip
  return config


def cache_dir() -> str:
  return os.environ.get('DEEPLAB_JAX_CACHE',
                        os.path.expanduser('~/.cache/deeplab_jax'))


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(url: str, sha256: str | None = None) -> str:
  """A local copy of `url` (http(s) or file://), cached and verified."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme in ('', 'file') and not url.startswith('file://'):
    return url  # Already a local path.
  name = os.path.basename(parsed.path)
  target = os.path.join(cache_dir(), name)
  if not os.path.exists(target):
    os.makedirs(cache_dir(), exist_ok=True)
    partial = target + '.partial'
    logging.info('Downloading %s to %s', url, target)
    try:
      with urllib.request.urlopen(url, timeout=60) as response, open(
          partial, 'wb') as out:
        shutil.copyfileobj(response, out)
    except OSError as e:
      raise WeightImportError(
          f'Could not download {url} ({e}). Offline? Fetch it elsewhere and '
          f'pass its local path as config.train.init_from, or put it in '
          f'{cache_dir()}.') from e
    os.replace(partial, target)  # Only complete files carry the real name.
  if sha256 and _sha256(target) != sha256:
    raise WeightImportError(
        f'{target} does not have the published sha256 {sha256}: delete it '
        'and download again.')
  return target


def load_model_file(path: str, config: Any):
  """A model built from config.model holding an official model's weights
  (every array from the file)."""
  model = _abstract_model(config)
  if str(path).endswith('.tflite'):
    weights = tflite.read_tflite(path)
    tflite.check_config(weights, config.model, config.eval.output_stride)
    tflite.load_into(model, weights)
  else:
    tf_checkpoint.load_into(model, tf_checkpoint.read_checkpoint(path),
                            str(path))
  check_filled(model, path)
  return model


def _abstract_model(config: Any):
  """The model's structure and shapes without initialising it: the file
  fills every array (random initialisation took 8 s of a MobileNetV2
  model's load on two CPU cores, all of it compiling initialisers)."""
  return nnx.eval_shape(lambda: create_model(
      config.model, output_stride=config.eval.output_stride))


def _is_tf_checkpoint(path: str) -> bool:
  return (path.endswith(('.tar.gz', '.tgz')) or os.path.exists(path + '.index')
          or (os.path.isdir(path) and any(
              f.endswith('.index') for f in os.listdir(path))
              and not os.path.isdir(os.path.join(path, 'checkpoints'))))


def has_folded_batch_norm(source: str | None) -> bool:
  """Whether `config.train.init_from` names weights whose BatchNorm is
  folded into the convolutions (identity statistics): the TFLite exports.
  Training BatchNorm from such weights with batch statistics destroys them.
  """
  if not source:
    return False
  if source in MODELS:
    return MODELS[source].format == 'tflite'
  return str(source).split('?')[0].endswith('.tflite')


def read_init_weights(source: str, config: Any
                      ) -> dict[tuple[str, ...], np.ndarray]:
  """{('params' | 'batch_stats', module path...): array} for `source`."""
  if source == 'keras_imagenet':
    return keras_weights.imagenet_backbone_weights(config.model)
  if source in MODELS:
    entry = MODELS[source]
    path = fetch(entry.url, entry.sha256)
  elif source in BACKBONE_CHECKPOINTS:
    _check_backbone_checkpoint(source, config.model)
    path = fetch(BACKBONE_CHECKPOINTS[source].url)
  else:
    path = fetch(source) if '://' in source else os.path.expanduser(source)
  if _is_tf_checkpoint(path) and file_num_classes(path) is None:
    # An ImageNet checkpoint of the backbone (the zoo's resnet_v1_*_beta,
    # xception_65): no DeepLab head, decoder or classifier.
    model = _abstract_model(config)
    tf_checkpoint.load_into(model, tf_checkpoint.read_checkpoint(path), path,
                            backbone_only=True)
    check_filled(model.backbone, path)
    return tree.module_weights(model.backbone, prefix=('backbone',))
  if path.endswith('.tflite') or _is_tf_checkpoint(path):
    # Built with the file's own classifier, so that a config for other
    # classes (fine-tuning to new data) loads everything else and keeps
    # its own classifier (copy_matching skips the shape that differs).
    file_config = config.copy_and_resolve_references()
    file_config.model.num_classes = file_num_classes(path)
    return tree.module_weights(load_model_file(path, file_config))
  return checkpoints.read_weights(path)


def file_num_classes(path: str) -> int | None:
  """The number of classes of an official file's classifier (None: a TF
  checkpoint without one, i.e. a backbone's ImageNet checkpoint)."""
  if str(path).endswith('.tflite'):
    layers = tflite.read_tflite(path).layers
    if LOGITS_TF_SCOPE not in layers:
      raise WeightImportError(f'{path} has no {LOGITS_TF_SCOPE} layer.')
    return int(layers[LOGITS_TF_SCOPE][0].shape[-1])
  shapes = tf_checkpoint.variable_shapes(path)
  name = f'{LOGITS_TF_SCOPE}/weights'
  if name not in shapes:
    return None
  return int(shapes[name][-1])


def load_into_model(model: nnx.Module, source: str, config: Any, *,
                    scope: str = 'model') -> dict:
  """Copies the weights of `source` (see `read_init_weights`) whose path and
  shape match into `model`, in place; returns copy_matching's report."""
  return copy_into_model(model, read_init_weights(source, config), scope)


def copy_into_model(model: nnx.Module,
                    weights: dict[tuple[str, ...], np.ndarray],
                    scope: str = 'model') -> dict:
  """`weights` ({('params' | 'batch_stats', path...): array}) whose path and
  shape match, copied into `model` in place; copy_matching's report."""
  params, batch_stats, report = tree.copy_matching(
      nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat), weights,
      scope=scope)
  nnx.update(model, params, batch_stats)
  return report
