"""CPU inference engines: LiteRT on an in-memory conversion gives XLA's
outputs (whole images, tiles with the image's mean feature, several
scales and flips), 'auto' keeps the faster engine per shape and converts
again for new weights, and where LiteRT cannot run it says why."""

import importlib.util

import jax
import numpy as np
import pytest
from flax import nnx

from deeplab_jax.config import default_config, validate_config
from deeplab_jax.errors import ConfigError
from deeplab_jax.inference import engines, programs
from deeplab_jax.inference.segmenter import Segmenter
from deeplab_jax.models import create_model
from tests.conftest import tiny_model_config

pytest.importorskip('tensorflow', reason='LiteRT conversion needs the TF '
                    'extra (requirements-tf.txt)')


def _config(cpu_runtime, toy=None, **eval_overrides):
  """A tiny MobileNetV2 DeepLab's config, or the toy backbone's with
  `toy` (the toy_model fixture) for tests of the choosing, not the
  numerics."""
  config = default_config()
  config.model = tiny_model_config()
  if toy is not None:
    toy(config)
  config.eval.cpu_runtime = cpu_runtime
  config.eval.output_stride = 16
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def _segmenter(config, seed=0):
  model = create_model(config.model, output_stride=16, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(programs.folded(model))
  segmenter = Segmenter(config, graphdef)
  segmenter.engine_log = []
  for program in (segmenter._whole, segmenter._tiles,  # pylint: disable=protected-access
                  segmenter._feature_sums):  # pylint: disable=protected-access
    program._log = segmenter.engine_log.append  # pylint: disable=protected-access
  return segmenter, segmenter.bind(state), state


def _canvases(n=2, size=65, seed=0):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, size, size, 3)).astype(np.float32)


# Largest |LiteRT - XLA| logit difference accepted (float32 summation
# order; ~1e-6 here).
ATOL = 1e-4


def _assert_close(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert np.shape(g) == np.shape(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=ATOL)


def test_litert_whole_images_give_xla_logits():
  """Several scales and flips: one program with several outputs, of the
  MobileNetV2 model (the other tests take the toy backbone)."""
  scales, flip = (0.5, 1.0), True
  segmenter, weights, _ = _segmenter(_config('litert', scales=scales,
                                             flip=flip))
  canvases = _canvases()
  got = segmenter.whole_grids(weights, canvases)
  want = jax.device_get(segmenter._whole.xla(weights, canvases))  # pylint: disable=protected-access
  _assert_close(got, want)
  assert segmenter._whole.choices == {'2x65x65x3': 'litert'}  # pylint: disable=protected-access
  assert len(got) == len(scales) and got[0].shape[0] == 2


def test_litert_tiles_with_the_image_mean_feature_give_xla_logits(
    toy_model):
  """The tile program takes the image's mean feature as a second input."""
  segmenter, weights, _ = _segmenter(_config('litert', toy_model))
  tiles = _canvases(3, 33)
  context = _context(segmenter, weights)
  got = segmenter._tiles(weights, tiles, context)  # pylint: disable=protected-access
  want = segmenter._tiles.xla(weights, tiles, context)  # pylint: disable=protected-access
  _assert_close(got, jax.device_get(want))
  # Without the context: another program, converted too.
  _assert_close(segmenter._tiles(weights, tiles, None),  # pylint: disable=protected-access
                jax.device_get(segmenter._tiles.xla(weights, tiles, None)))  # pylint: disable=protected-access
  assert set(segmenter._tiles.choices.values()) == {'litert'}  # pylint: disable=protected-access
  assert len(segmenter._tiles.choices) == 2  # pylint: disable=protected-access


def _context(segmenter, weights):
  """A [flips, 1, 1, C] mean backbone feature, as slide mode computes."""
  tiles = _canvases(1, 33, seed=2)
  mask = np.ones((1, 3, 3), np.float32)
  sums = np.asarray(segmenter._feature_sums(weights, tiles, mask)[0])  # pylint: disable=protected-access
  return (sums / 9.0)[:, None, None, :]


def test_slide_mode_through_litert_gives_xla_classes(toy_model):
  """A whole segmentation in slide mode (the image's mean feature, tiles,
  blending) under LiteRT and under XLA: the same classes."""
  image = np.random.default_rng(3).integers(0, 255, (90, 120, 3), np.uint8)
  results = {}
  for runtime in ('litert', 'xla'):
    segmenter, weights, _ = _segmenter(_config(
        runtime, toy_model, mode='slide', tile_size=33, tile_batch=4))
    results[runtime] = segmenter.segment(weights, image,
                                         with_confidence=True)
    # Both slide passes (the image's mean feature, then the tiles) ran.
    assert segmenter.engine() == {'litert': 'LiteRT', 'xla': 'XLA'}[runtime]
    assert len(segmenter._feature_sums.choices) == (runtime == 'litert')  # pylint: disable=protected-access
  np.testing.assert_allclose(results['litert'].confidence,
                             results['xla'].confidence, atol=1e-4)
  same = np.mean(results['litert'].classes == results['xla'].classes)
  assert same > 0.999, same


def _fake_timings(monkeypatch, litert_seconds, xla_seconds):
  monkeypatch.setattr(engines, '_seconds', lambda fn, args: (
      litert_seconds if isinstance(fn, engines.LiteRTProgram)
      else xla_seconds))


@pytest.mark.parametrize('litert_seconds,xla_seconds,expected',
                         [(0.01, 0.02, 'litert'), (0.03, 0.02, 'xla')])
def test_auto_keeps_the_faster_engine_after_enough_xla_time(
    monkeypatch, toy_model, litert_seconds, xla_seconds, expected):
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 0.0)
  _fake_timings(monkeypatch, litert_seconds, xla_seconds)
  calls = []
  original = engines.LiteRTProgram.__call__
  monkeypatch.setattr(engines.LiteRTProgram, '__call__',
                      lambda self, *a: calls.append(1) or original(self, *a))
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  canvases = _canvases()
  first = segmenter.whole_grids(weights, canvases)
  assert segmenter._whole.choices == {'2x65x65x3': expected}  # pylint: disable=protected-access
  line, = segmenter.engine_log
  assert (f'LiteRT {litert_seconds * 1e3:.1f} ms, XLA '
          f'{xla_seconds * 1e3:.1f} ms a call') in line, line
  assert f'{"LiteRT" if expected == "litert" else "XLA"} from here on' in line
  before = len(calls)
  again = segmenter.whole_grids(weights, canvases)
  assert len(calls) - before == (1 if expected == 'litert' else 0)
  _assert_close(again, first)


def test_auto_waits_for_xla_time_before_converting(monkeypatch, toy_model):
  """A program run for less than AUTO_AFTER_SECONDS is never converted."""
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 1e9)
  monkeypatch.setattr(engines, 'convert', lambda *a: pytest.fail(
      'converted'))
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  for _ in range(3):
    segmenter.whole_grids(weights, _canvases())
  assert segmenter._whole.choices == {}  # pylint: disable=protected-access
  assert segmenter.engine_log == []


def test_the_compiling_first_call_does_not_count(monkeypatch, toy_model):
  """Compiling takes seconds: only the calls after it say whether the
  program keeps running."""
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 1e-9)
  _fake_timings(monkeypatch, 0.01, 0.02)
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  segmenter.whole_grids(weights, _canvases())
  assert segmenter._whole.choices == {}  # pylint: disable=protected-access
  segmenter.whole_grids(weights, _canvases())
  assert segmenter._whole.choices == {'2x65x65x3': 'litert'}  # pylint: disable=protected-access


def test_new_weights_are_converted_again(monkeypatch, toy_model):
  """The next checkpoint's weights run through a new conversion, never the
  previous weights' file."""
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 0.0)
  _fake_timings(monkeypatch, 0.01, 0.02)
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  canvases = _canvases()
  first = segmenter.whole_grids(weights, canvases)
  other = create_model(segmenter.config.model, output_stride=16,
                       rngs=nnx.Rngs(7))
  new_weights = segmenter.bind(nnx.state(programs.folded(other)))
  second = segmenter.whole_grids(new_weights, canvases)
  want = jax.device_get(segmenter._whole.xla(new_weights, canvases))  # pylint: disable=protected-access
  _assert_close(second, want)
  assert not np.allclose(first[0], second[0])
  assert len(segmenter.engine_log) == 1  # The choice is kept, not re-timed.


@pytest.mark.parametrize('how', ['beyond the tolerance', 'NaN'])
def test_outputs_that_differ_keep_xla(monkeypatch, toy_model, how):
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 0.0)
  if how == 'NaN':
    original = engines.LiteRTProgram.__call__
    monkeypatch.setattr(engines.LiteRTProgram, '__call__', lambda self, *a: (
        tuple(np.full_like(o, np.nan) for o in original(self, *a))))
  else:
    monkeypatch.setattr(engines, 'TOLERANCE', -1.0)
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  segmenter.whole_grids(weights, _canvases())
  assert segmenter._whole.choices == {'2x65x65x3': 'xla'}  # pylint: disable=protected-access
  assert 'LiteRT differs by' in segmenter.engine_log[0]
  with pytest.raises(ConfigError, match="set it to 'xla'"):
    segmenter, weights, _ = _segmenter(_config('litert', toy_model))
    segmenter.whole_grids(weights, _canvases())


def test_without_tensorflow_auto_says_so_once_and_litert_refuses(
    monkeypatch, toy_model):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      None if name == 'tensorflow' else find_spec(name, *a)))
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 1e9)
  segmenter, weights, _ = _segmenter(_config('auto', toy_model))
  segmenter.whole_grids(weights, _canvases())
  assert segmenter.engine_log == []  # Nothing to say yet.
  monkeypatch.setattr(engines, 'AUTO_AFTER_SECONDS', 0.0)
  for _ in range(2):
    segmenter.whole_grids(weights, _canvases())
  assert segmenter.engine_log == [
      'CPU inference (whole image): XLA (converting to LiteRT needs '
      'TensorFlow: pip install -r requirements-tf.txt).']
  with pytest.raises(ConfigError, match='needs TensorFlow'):
    _segmenter(_config('litert', toy_model))


def test_cpu_runtime_is_checked_by_the_config():
  config = _config('fastest')
  with pytest.raises(ConfigError, match='cpu_runtime'):
    validate_config(config)
