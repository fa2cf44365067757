"""Every part a config names comes from a registry: a toy head, decoder,
optimizer, schedule, loss, eval runtime and export format, each registered
from here alone, are taken by the config, the model, the optimizer, the
train step, evaluation and --mode=export; an unknown name lists the
registered ones."""

import numpy as np
import optax
import pytest
from flax import nnx

import jax
import jax.numpy as jnp

from deeplab_jax import cli, distributed, export, losses, optim, train
from deeplab_jax.config import default_config, validate_config
from deeplab_jax.errors import ConfigError
from deeplab_jax.export import ExportFormat
from deeplab_jax.inference import runtimes
from deeplab_jax.models import create_model, inference_view
from deeplab_jax.models.decoder import DECODERS
from deeplab_jax.models.heads import HEADS
from deeplab_jax.models.layers import ConvBN
from tests.conftest import tiny_model_config


class ToyHead(nnx.Module):
  """One 1x1 ConvBN."""

  def __init__(self, in_features, channels, options, rngs):
    self.proj = ConvBN(in_features, channels, 1, options=options, rngs=rngs)
    self.out_channels = channels

  @classmethod
  def from_config(cls, head_config, in_features, *, output_stride, options,
                  rngs):
    del output_stride
    return cls(in_features, head_config.channels, options, rngs)

  def tf_scopes(self):
    return {'toy_head': self.proj}

  def __call__(self, features, *, rngs=None):
    del rngs
    return self.proj(features)


def toy_optimizer(train_config, schedule):
  del train_config
  return optax.sgd(schedule)  # Plain SGD, no momentum.


def toy_schedule(train_config, learning_rate, decay_steps):
  del train_config, decay_steps
  return lambda step: learning_rate * 0.5  # Half the rate, always.


class BrierLoss:
  """Mean over labelled pixels of |softmax - one-hot|^2."""

  def denominator(self, labels, context):
    return jnp.sum(labels != context.ignore_label)

  def numerator(self, logits, labels, context):
    keep, safe = losses.base.labelled(labels, context)
    error = jnp.sum(jnp.square(jax.nn.softmax(logits) - jax.nn.one_hot(
        safe, context.num_classes)), axis=-1)
    return jnp.sum(jnp.where(keep, error, 0.0))


@pytest.fixture
def toys(monkeypatch):
  monkeypatch.setitem(HEADS, 'toy', ToyHead.from_config)
  monkeypatch.setitem(DECODERS, 'none', DECODERS['upsample'])
  monkeypatch.setitem(optim.OPTIMIZERS, 'toy_sgd', toy_optimizer)
  monkeypatch.setitem(optim.LR_SCHEDULES, 'half', toy_schedule)
  monkeypatch.setitem(losses.LOSSES, 'brier', BrierLoss())


def test_toy_parts_are_validated_built_and_used(toys):
  config = default_config()
  config.model = tiny_model_config(**{'head.type': 'toy',
                                      'decoder.type': 'none'})
  config.train.optimizer, config.train.lr_schedule = 'toy_sgd', 'half'
  validate_config(config)
  model = create_model(config.model)
  assert isinstance(model.head, ToyHead) and model.decoder is None
  logits = inference_view(model)(np.zeros((1, 65, 65, 3), np.float32))
  assert logits.shape == (1, 65, 65, 21)
  schedule = optim.learning_rate_schedule(config.train, 100)
  assert schedule(0) == schedule(99) == config.train.learning_rate / 2
  config.train.weight_decay, config.train.bias_lr_multiplier = 0.0, 1.0
  masks = optim.ParameterMasks(None, None)
  tx = optim.create_optimizer(config.train, 100, masks,
                              freeze_backbone=False)
  params = {'w': np.ones(3, np.float32)}
  updates, _ = tx.update({'w': np.ones(3, np.float32)}, tx.init(params))
  np.testing.assert_allclose(updates['w'], -config.train.learning_rate / 2)


def test_a_toy_loss_is_trained_on_and_logged(toys):
  config = default_config()
  config.model = tiny_model_config(**{'num_classes': 3})
  config.train.loss = (('cross_entropy', 1.0), ('brier', 2.0))
  config.train.batch_size = 2
  validate_config(config)
  trainer = train.Trainer(config, num_steps=4, mesh=distributed.make_mesh(
      jax.local_devices()[:1]))
  trainer.place()
  rng = np.random.default_rng(0)
  metrics = trainer.step({
      'image': rng.uniform(-1, 1, (2, 33, 33, 3)).astype(np.float32),
      'label': rng.integers(0, 3, (2, 33, 33)).astype(np.uint8)})
  # At initialisation the probabilities are near uniform: |p - y|^2 is
  # about (1 - 1/3)^2 + 2 (1/3)^2 = 2/3.
  assert abs(float(metrics['brier']) - 2 / 3) < 0.1
  total = (float(metrics['cross_entropy']) + 2 * float(metrics['brier']) +
           float(metrics['weight_decay_loss']))
  assert abs(float(metrics['loss']) - total) < 1e-5


def test_unknown_names_list_the_registered_ones(toys):
  config = default_config()
  config.model.head.type = 'nope'
  with pytest.raises(ConfigError, match="config.model.head.type = 'nope' is "
                     "not allowed: use one of 'aspp', 'dpc', 'toy'"):
    validate_config(config)
  config = default_config()
  config.train.optimizer = 'lion'
  with pytest.raises(ConfigError, match="'sgd', 'adam', 'toy_sgd'"):
    validate_config(config)
  config = default_config()
  config.train.loss = (('l1', 1.0),)
  with pytest.raises(ConfigError, match="'lovasz_softmax', 'brier'"):
    validate_config(config)


def test_a_toy_export_format_and_runtime(monkeypatch, tmp_path):
  """A format that writes the model's logits' shape, and a runtime that
  reads such a file: --mode=export and evaluation's runtime take them."""
  written = []

  def toy_export(model, config, path):
    written.append(type(model).__name__)
    with open(path, 'w') as f:
      f.write(str(config.eval.crop_size))
    return path

  def toy_runtime(path, check):
    size = int(open(path).read())
    check(path, (1, size, size, 3), (1, size, size, 21))
    return lambda images: np.zeros(images.shape[:3] + (21,), np.float32)

  monkeypatch.setitem(export.EXPORT_FORMATS, 'toy',
                      ExportFormat(toy_export, '.toy'))
  monkeypatch.setitem(runtimes.RUNTIMES, 'toy', toy_runtime)
  config = default_config()
  config.model = tiny_model_config()
  config.eval.crop_size = 65
  config.train.init_from = None
  model = create_model(config.model)
  monkeypatch.setattr(cli, 'inference_model', lambda c, w: (model, None))
  out = cli.run(config, mode='export', workdir=str(tmp_path),
                export_format='toy')
  assert out.endswith('model_os8.toy') and written == ['DeepLab']
  config.eval.runtime, config.eval.model_file = 'toy', out
  config.eval.scales, config.eval.flip = (1.0,), False
  validate_config(config)
  scores = runtimes.make_scores(config)(np.zeros((2, 65, 65, 3), np.float32))
  assert scores.shape == (2, 65, 65, 21)
  with pytest.raises(ConfigError, match="'bmp' is not a known export "
                     "format: use one of 'tflite'.*'toy'"):
    cli.run(config, mode='export', workdir=str(tmp_path),
            export_format='bmp')
