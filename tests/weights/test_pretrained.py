"""Pretrained sources: download cache, TF checkpoints, and the float
model's mIoU through our eval pipeline against LiteRT's."""

import dataclasses
import importlib.util
import pathlib
import tarfile

import numpy as np
import pytest

from deeplab_jax import evaluate, metrics
from deeplab_jax.data import pipeline, voc
from deeplab_jax.errors import WeightImportError
from deeplab_jax.weights import pretrained, tflite, tree

REPO = pathlib.Path(__file__).resolve().parents[2]
FLOAT = 'deeplabv3_257_mv_gpu.tflite'


def pretrained_config(name):
  spec = importlib.util.spec_from_file_location(
      'voc_pretrained', REPO / 'configs' / 'voc_pretrained.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(name)


def test_fetch_copies_verifies_and_caches(shared_models_dir, tmp_path,
                                          monkeypatch):
  monkeypatch.setenv('DEEPLAB_JAX_CACHE', str(tmp_path / 'cache'))
  entry = pretrained.MODELS['mnv2_dm05_pascal_float_257']
  url = (shared_models_dir / FLOAT).as_uri()  # file://: the download path.
  local = pretrained.fetch(url, entry.sha256)
  assert pathlib.Path(local).parent == tmp_path / 'cache'
  assert pathlib.Path(local).read_bytes() == (shared_models_dir /
                                              FLOAT).read_bytes()
  with pytest.raises(WeightImportError, match='does not have the published '
                     'sha256'):
    pretrained.fetch(url, '0' * 64)
  with pytest.raises(WeightImportError, match='Could not download'):
    pretrained.fetch('http://127.0.0.1:9/model.tflite')


def test_a_registry_name_downloads_and_loads(shared_models_dir, tmp_path,
                                            monkeypatch):
  monkeypatch.setenv('DEEPLAB_JAX_CACHE', str(tmp_path / 'cache'))
  name = 'mnv2_dm05_pascal_float_257'
  local_entry = dataclasses.replace(
      pretrained.MODELS[name], url=(shared_models_dir / FLOAT).as_uri())
  monkeypatch.setitem(pretrained.MODELS, name, local_entry)
  weights = pretrained.read_init_weights(name, pretrained_config(name))
  kernel = weights[('params', 'backbone', 'stem', 'conv', 'kernel')]
  assert kernel.shape == (3, 3, 3, 16)
  np.testing.assert_array_equal(
      weights[('batch_stats', 'backbone', 'stem', 'bn', 'mean')], 0.0)


def _unfolded_checkpoint(float_weights, prefix, model_config):
  """A zoo-style TF checkpoint (unfolded BatchNorm with random moving
  statistics) computing what the folded float export computes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  names, tensors = [], []
  for scope, (kernel, bias) in float_weights.layers.items():
    if scope == 'logits/semantic':
      names += [f'{scope}/weights', f'{scope}/biases']
      tensors += [kernel, bias]
      continue
    eps = (model_config.backbone.bn_epsilon if scope.startswith('MobilenetV2')
           else model_config.bn_epsilon)
    channels = kernel.shape[-1]
    gamma = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    mean = rng.normal(0, 0.5, channels).astype(np.float32)
    factor = np.sqrt(var + eps) / gamma  # W_folded = W * gamma / sqrt(var)
    if scope.endswith('/depthwise'):  # TF layout [kh, kw, C, 1].
      names.append(f'{scope}/depthwise_weights')
      tensors.append(np.transpose(kernel * factor, (0, 1, 3, 2)))
    else:
      names.append(f'{scope}/weights')
      tensors.append(kernel * factor)
    beta = bias + gamma * mean / np.sqrt(var + eps)
    for suffix, value in (('gamma', gamma), ('beta', beta),
                          ('moving_mean', mean), ('moving_variance', var)):
      names.append(f'{scope}/BatchNorm/{suffix}')
      tensors.append(value)
  names.append('global_step')
  tensors.append(np.int64(30000))
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(t) for t in tensors])


def test_zoo_checkpoint_with_unfolded_batch_norm_matches_litert(
    shared_models_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('DEEPLAB_JAX_CACHE', str(tmp_path / 'cache'))
  config = pretrained_config('mnv2_dm05_pascal_float_257')
  float_weights = tflite.read_tflite(shared_models_dir / FLOAT)
  folder = tmp_path / 'deeplabv3_mnv2_dm05_pascal'
  folder.mkdir()
  _unfolded_checkpoint(float_weights, folder / 'model.ckpt-30000',
                       config.model)
  archive = tmp_path / 'deeplabv3_mnv2_dm05_pascal.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(folder, arcname=folder.name)
  # As a user would: init_from the archive's URL.
  weights = pretrained.read_init_weights(archive.as_uri(), config)
  assert np.any(weights[('batch_stats', 'backbone', 'stem', 'bn', 'mean')])
  from deeplab_jax.models import create_model, inference_view  # pylint: disable=g-import-not-at-top
  from deeplab_jax.weights.tree import copy_matching  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = create_model(config.model, output_stride=8)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats, report = copy_matching(params, stats, weights)
  assert not report['skipped'] and not report['missing']
  model = inference_view(nnx.merge(graphdef, params, stats))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  testdata = shared_models_dir / 'testdata'
  pixels = np.asarray(Image.open(testdata / 'bird_257.png').convert('RGB'),
                      np.float32)
  logits = np.asarray(model(pixels[None] / 127.5 - 1, upsample=False))[0]
  reference = np.load(testdata / 'bird_257_ref_logits33.npy')
  np.testing.assert_allclose(logits, reference, atol=1e-3)


def _resized_argmax(logits, valid, size):
  """Class ids at the image's own size from logits of its fitted copy
  (the `valid` corner of the input), by numpy bilinear sampling with
  pixel centres aligned (how PIL fitted it): an independent reference."""
  h, w = (int(v) for v in valid)
  out = logits[:h, :w]
  for axis, (n, m) in enumerate(((h, size[0]), (w, size[1]))):
    coords = np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = (coords - lo).reshape([-1 if a == axis else 1 for a in range(3)])
    out = (np.take(out, lo, axis) * (1 - frac) +
           np.take(out, hi, axis) * frac)
  return out.argmax(-1)


def test_float_model_miou_in_our_pipeline_equals_litert(
    voc_prepared, shared_models_dir, capsys):
  """All 32 VOC sample images, resized to fit 257 and padded (the export's
  fixed input), predictions upsampled to the original size for scoring."""
  data_config, _ = voc_prepared
  config = pretrained_config('mnv2_dm05_pascal_float_257')
  config.data.data_dir = data_config.data.data_dir
  config.data.eval_split = 'train+validation'
  config.data.num_workers = 0
  config.eval.num_result_images = 0
  path = str(shared_models_dir / FLOAT)
  model = pretrained.load_model_file(path, config)
  ours = evaluate.evaluate(config, model, workdir=None)
  assert ours['images'] == 32

  interpreter = tflite.interpreter(path)
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  confusion = np.zeros((21, 21), np.int64)
  for example in pipeline.eval_loader(config):
    interpreter.set_tensor(inp['index'], example['image'][None])
    interpreter.invoke()
    logits = interpreter.get_tensor(out['index'])[0].astype(np.float64)
    prediction = _resized_argmax(logits, example['valid'],
                                 example['label'].shape)
    confusion += metrics.confusion_matrix_numpy(prediction, example['label'],
                                                21, ignore_label=255)
  litert = metrics.summarize(confusion, voc.CLASS_NAMES)
  with capsys.disabled():
    print(f'\n  float dm0.5 on the 32 VOC sample images: mIoU ours '
          f'{100 * ours["miou"]:.2f}, LiteRT {100 * litert["miou"]:.2f}; '
          f'pixel accuracy ours {100 * ours["pixel_accuracy"]:.2f}, LiteRT '
          f'{100 * litert["pixel_accuracy"]:.2f}')
  assert ours['pixels'] == litert['pixels']
  assert abs(ours['miou'] - litert['miou']) * 100 <= 0.1
  assert ours['miou'] > 0.3  # A working model, not two equal failures.


def _fine_tune_config(voc_prepared, shared_models_dir, steps):
  """The README's advice, as a new user would follow it: the official
  model's own config, its weights, no BatchNorm flag; the reference's small
  fine-tuning batch (4) and learning rate (1e-4) on the 26 sample images."""
  data_config, _ = voc_prepared
  config = pretrained_config('mnv2_dm05_pascal_float_257')
  config.data.data_dir = data_config.data.data_dir
  config.data.num_workers = 0
  config.data.crop_size = 321
  config.train.init_from = str(shared_models_dir / FLOAT)
  config.train.batch_size = 4
  config.train.learning_rate = 1e-4
  config.train.num_steps = steps
  config.train.checkpoint_every_steps = steps
  config.train.log_every_steps = steps
  config.eval.num_result_images = 0
  return config


def test_fine_tuning_an_official_model_keeps_it(voc_prepared,
                                                shared_models_dir, tmp_path):
  """Imported with folded BatchNorm and trained at batch 4, the model's
  BatchNorm is frozen automatically, so fine-tuning keeps its accuracy
  (with batch statistics and the backbone trained, the sample mIoU falls
  from 0.61 to 0.08 in these 12 steps)."""
  from deeplab_jax import checkpoints, cli, train, train_step  # pylint: disable=g-import-not-at-top
  config = _fine_tune_config(voc_prepared, shared_models_dir, steps=12)
  frozen, reason, warning = train_step.batch_norm_policy(config, devices=1)
  assert frozen and warning is None and 'folded' in reason
  # And its backbone, which has no normalisation left (the dm0.5 quantized
  # model trained whole lost 8 mIoU points in 60 steps at 1e-4).
  frozen, reason, warning = train_step.backbone_policy(config)
  assert frozen and warning is None and 'folded' in reason
  evaluator = evaluate.Evaluator(config)
  before, _ = cli.inference_model(config, None)
  weights_before = tree.module_weights(before)
  miou_before = evaluator.evaluate(before, workdir=None)['miou']
  train.train(config, str(tmp_path / 'run'))
  after, _ = checkpoints.restore_model(config, str(tmp_path / 'run'))
  weights_after = tree.module_weights(after)
  miou_after = evaluator.evaluate(after, workdir=None)['miou']
  assert miou_before == pytest.approx(0.6067, abs=1e-3)
  # Kept (it may improve).
  assert miou_after >= miou_before - 0.02, (miou_before, miou_after)
  backbone = [k for k in weights_before if 'backbone' in k[:2]]
  assert backbone and all(np.array_equal(weights_before[k], weights_after[k])
                          for k in backbone)
  assert any(not np.array_equal(weights_before[k], weights_after[k])
             for k in weights_before if k not in backbone)  # The rest trained.


def test_zoo_imagenet_backbone_checkpoint_fills_the_backbone(tmp_path,
                                                            monkeypatch):
  """resnet_v1_50_beta_imagenet: the zoo's ImageNet checkpoint (backbone
  variables and an ImageNet classifier, no DeepLab head) by its registry
  name, from a local archive in place of the download."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from deeplab_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models import backbones, create_model  # pylint: disable=g-import-not-at-top
  from deeplab_jax.models.layers import ConvBN  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('DEEPLAB_JAX_CACHE', str(tmp_path / 'cache'))
  config = default_config()
  config.model.backbone = backbones.backbone_config('resnet_v1')
  config.model.backbone.stem = 'beta'
  abstract = nnx.eval_shape(lambda: create_model(config.model))
  rng = np.random.default_rng(0)
  variables = {}
  for scope, conv in abstract.backbone.tf_scopes().items():
    assert isinstance(conv, ConvBN)
    variables[f'{scope}/weights'] = rng.normal(
        0, 0.1, conv.conv.kernel.shape).astype(np.float32)
    for name in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
      variables[f'{scope}/BatchNorm/{name}'] = rng.uniform(
          0.5, 1.5, conv.bn.mean.shape).astype(np.float32)
  variables['resnet_v1_50/logits/weights'] = np.zeros((1, 1, 2048, 1000),
                                                      np.float32)
  folder = tmp_path / 'resnet_v1_50'
  folder.mkdir()
  tf.raw_ops.SaveV2(prefix=str(folder / 'model.ckpt'),
                    tensor_names=list(variables),
                    shape_and_slices=[''] * len(variables),
                    tensors=[tf.constant(v) for v in variables.values()])
  archive = tmp_path / 'resnet_v1_50_2018_05_04.tar.gz'
  # Level 0: still the gzip stream the zoo serves and the reader unpacks,
  # but random weights do not deflate (level 1 took 4.5 s on Xception-65's).
  with tarfile.open(archive, 'w:gz', compresslevel=0) as tar:
    tar.add(folder, arcname=folder.name)
  name = 'resnet_v1_50_beta_imagenet'
  monkeypatch.setitem(pretrained.BACKBONE_CHECKPOINTS, name,
                      dataclasses.replace(pretrained.BACKBONE_CHECKPOINTS[name],
                                          url=archive.as_uri()))

  weights = pretrained.read_init_weights(name, config)
  assert all(key[1] == 'backbone' for key in weights)
  np.testing.assert_array_equal(
      weights[('params', 'backbone', 'stem', '0', 'conv', 'kernel')],
      variables['resnet_v1_50/conv1_1/weights'])
  np.testing.assert_array_equal(
      weights[('batch_stats', 'backbone', 'blocks', '3', '2', 'conv3', 'bn',
               'var')],
      variables['resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/BatchNorm/'
                'moving_variance'])
  # 3 stem + 16 x 3 + 4 shortcut ConvBNs: a kernel and 4 BN arrays each.
  assert len(weights) == (3 + 16 * 3 + 4) * 5

  # A config with another stem gets one message naming what to set.
  config.model.backbone.stem = '7x7'
  with pytest.raises(WeightImportError, match="stem='beta'"):
    pretrained.read_init_weights(name, config)


def test_inference_model_from_a_file_builds_no_random_model(
    shared_models_dir, monkeypatch, caplog):
  """eval/predict/export with init_from: the file fills an abstract model
  (no random initialisation first); a file that leaves arrays unset (a
  classifier for other classes) falls back to a random model for those,
  with a warning that names them."""
  import jax  # pylint: disable=g-import-not-at-top
  from deeplab_jax import cli  # pylint: disable=g-import-not-at-top
  config = pretrained_config('mnv2_dm05_pascal_float_257')
  config.train.init_from = str(shared_models_dir / FLOAT)
  concrete_builds = []
  real_create_model = cli.create_model

  def spy(*args, **kwargs):
    model = real_create_model(*args, **kwargs)  # Traced or concrete.
    concrete_builds.append(not isinstance(model.logits.kernel.get_value(),
                                          jax.core.Tracer))
    return model
  monkeypatch.setattr(cli, 'create_model', spy)
  with caplog.at_level('WARNING'):
    model, step = cli.inference_model(config, None)
  assert step is None and concrete_builds == [False]
  assert 'random initialisation' not in caplog.text
  expected = pretrained.read_init_weights(config.train.init_from, config)
  got = tree.module_weights(model)
  assert set(got) == set(expected)
  assert all(np.array_equal(got[k], expected[k]) for k in expected)

  config.model.num_classes = 2  # The file's classifier has 21.
  concrete_builds.clear()
  with caplog.at_level('WARNING'):
    model, _ = cli.inference_model(config, None)
  assert concrete_builds == [False, True]
  assert 'keep their random initialisation' in caplog.text
  assert 'logits' in caplog.text
  got = tree.module_weights(model)
  assert got[('params', 'logits', 'kernel')].shape[-1] == 2
  assert all(np.array_equal(got[k], expected[k]) for k in expected
             if 'logits' not in k)
