"""Segmenting an image of any size under `config.eval`'s policy.

A `Segmenter` is built once per model structure (or exported file) and
eval config and owns its compiled programs: whole-image passes (one per
canvas shape; all scales and flips in one program) and tiles (one program,
[tile_batch, tile, tile, 3], for every tile of every image). New weights
(the next checkpoint) are arguments, never a new compile. Both modes end in
`blend.finish`, so a sliding window whose one tile covers the image gives
exactly the whole-image result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from deeplab_jax import distributed
from deeplab_jax.inference import blend, engines, programs, runtimes
from deeplab_jax.inference.policy import InferencePolicy
from deeplab_jax.models import backbones
from deeplab_jax.ops.resize import resize_bilinear, scale_dimension
from deeplab_jax.progress import TileProgress


@dataclasses.dataclass
class Segmentation:
  """One image's result.

  Attributes:
    classes: [H, W] uint8 class ids at the image's own size.
    confidence: [H, W] float32 probability of the winning class (averaged
      over scales and flips), when asked for.
    mode: 'whole' or 'slide'.
    scale: the input scale applied before inference.
    tiles: tiles run (slide mode), else 0.
    seconds: wall time.
  """
  classes: np.ndarray
  confidence: np.ndarray | None
  mode: str
  scale: float
  tiles: int
  seconds: float


def whole_canvas(policy: InferencePolicy, preprocessing: backbones.Preprocessing,
                 image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
  """(the normalised float32 canvas whole mode runs, padded at the bottom
  and right with the mean pixel, and (h, w) of the scaled image in it) for
  a uint8 [H, W, 3] image. Pure numpy: the eval pipeline's workers call
  it."""
  height, width = image.shape[:2]
  scaled = scaled_uint8(image, policy.scaled_size(height, width))
  h, w = scaled.shape[:2]
  ch, cw = policy.whole_canvas(h, w)
  out = np.full((ch, cw, 3), preprocessing.pad_value, np.float32)
  out[:h, :w] = preprocessing.normalize(scaled)
  return out, (h, w)


def scaled_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`image` resized to (h, w) with PIL's bilinear filter (pixel centres
  aligned: `blend.pixel_map`); the image itself at its own size."""
  if tuple(size) == image.shape[:2]:
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]),
                                                  Image.BILINEAR))


class Segmenter:
  """Runs `config.eval`'s inference policy for one model structure.

  Args:
    config: the full config (`eval` for the policy, `model` for the
      classes and the input normalisation).
    graphdef: the structure of the model to run (the inference copy with
      BatchNorm folded); None runs `config.eval.model_file` under
      `config.eval.runtime` instead.
    mesh: whole-image batches are sharded over its 'data' axis (eval).
  """

  def __init__(self, config: Any, graphdef: nnx.GraphDef | None = None, *,
               mesh=None):
    self.config = config
    self.policy = InferencePolicy.from_config(config)
    self.preprocessing = backbones.preprocessing(config.model)
    self.num_classes = int(config.model.num_classes)
    self.graphdef = graphdef
    self._treedef = None
    self._abstract_leaves = None
    self._announced = False
    scales = self.policy.scales
    flip = self.policy.flip
    if graphdef is None:  # An exported file, run on the host.
      run = runtimes.make_scores(config)
      stride = runtimes.grid_stride(config, self.policy.crop_size)

      def host(weights, images, image_features=None):
        del weights, image_features  # A file pools its own tile.
        out = run(np.asarray(images))[:, ::stride, ::stride]
        return (out[None],)

      self._whole = self._tiles = host
      self._grid_stride = stride
      self._uses_context = False
      return
    self._grid_stride = None
    self._uses_context = None  # Known once weights are bound.
    in_shardings = (None if mesh is None else
                    (None, distributed.data_sharding(mesh)))

    def passes(model, images, view_scales, image_features=None):
      """Per scale, [flips, N, rows, cols, classes] logits on the grid."""
      height, width = images.shape[1:3]
      out = []
      for scale in view_scales:
        x = images if scale == 1.0 else resize_bilinear(
            images, (scale_dimension(height, scale),
                     scale_dimension(width, scale)))
        inputs = [x, x[:, :, ::-1]] if flip else [x]
        logits = []
        for f, pixels in enumerate(inputs):
          pooled = (None if image_features is None else jnp.broadcast_to(
              image_features[f], (x.shape[0], 1, 1, image_features.shape[-1])))
          out_f = model(pixels, upsample=False, image_features=pooled)
          logits.append(out_f[:, :, ::-1] if f else out_f)
        out.append(jnp.stack([l.astype(jnp.float32) for l in logits]))
      return tuple(out)

    def whole(leaves, images):
      return passes(self._model(leaves), images, scales)

    def tiles(leaves, images, image_features=None):
      return passes(self._model(leaves), images, (1.0,), image_features)

    def feature_sums(leaves, images, weights):
      """[flips, C] sums of the tiles' backbone features weighted by
      `weights` ([N, rows, cols] on the feature grid): each tile's share
      of the image's mean feature."""
      backbone = self._model(leaves).backbone
      sums = []
      for f in range(2 if flip else 1):
        features = backbone(images[:, :, ::-1] if f else images)['features']
        features = features[:, :, ::-1] if f else features
        sums.append(jnp.einsum('nhwc,nhw->c', features.astype(jnp.float32),
                               weights))
      return (jnp.stack(sums),)

    runtime = config.eval.cpu_runtime
    self._whole = engines.Program(
        whole, programs.jit(whole, in_shardings=in_shardings), runtime,
        name='whole image')
    self._tiles = engines.Program(tiles, programs.jit(tiles), runtime,
                                  name='tiles')
    self._feature_sums = engines.Program(
        feature_sums, programs.jit(feature_sums), runtime,
        name='image features')

  def engine(self) -> str:
    """What ran the model so far: 'XLA', 'LiteRT' (eval.cpu_runtime; per
    program where they differ) or an exported file's runtime."""
    if self.graphdef is None:
      return self.config.eval.runtime
    used = {name: program.engine() for name, program in (
        ('whole images', self._whole), ('tiles', self._tiles),
        ('image features', self._feature_sums))}
    used = {name: engine for name, engine in used.items() if engine}
    if len(set(used.values())) <= 1:
      return next(iter(used.values()), 'XLA')
    return '; '.join(f'{name}: {engine}' for name, engine in used.items())

  # ------------------------------------------------------------ weights

  def _model(self, leaves):
    return nnx.merge(self.graphdef, jax.tree.unflatten(self._treedef,
                                                       leaves))

  def bind(self, state: Any) -> Any:
    """The weights argument of the other methods: the folded model's
    state, flattened once (jit flattening an nnx.State at every call cost
    0.7 ms a tile)."""
    if self.graphdef is None:
      return None
    leaves, treedef = jax.tree.flatten(state)
    self._treedef = treedef
    self._abstract_leaves = [jax.ShapeDtypeStruct(x.shape, x.dtype)
                             for x in leaves]
    self._uses_context = (self.policy.slide_context == 'image' and
                          nnx.merge(self.graphdef, state).uses_image_features)
    return leaves

  # ------------------------------------------------------------ geometry

  def grid_stride(self) -> int:
    """Pixels between the model's logits (its decoder's stride, 4, or the
    output stride), read off the tile program's output shape."""
    if self._grid_stride is None:
      tile = self.policy.tile()
      out = jax.eval_shape(self._tiles.xla, self._abstract_leaves,
                           jax.ShapeDtypeStruct((1, tile, tile, 3),
                                                jnp.float32))[0]
      self._grid_stride = (tile - 1) // (out.shape[2] - 1)
    return self._grid_stride

  def count_tiles(self, height: int, width: int) -> int:
    """Tile passes slide mode runs for an image of (height, width): each
    tile once, twice when the model pools the whole image
    (`image_features`) over several tiles."""
    stride = self.grid_stride()
    counts = [self.policy.tiling(*self.policy.scaled_size(
        height, width, scale), stride).count for scale in self.policy.scales]
    return sum(c * (2 if self._uses_context and c > 1 else 1)
               for c in counts)

  # -------------------------------------------------------------- whole

  def whole_grids(self, weights: Any, canvases: np.ndarray
                  ) -> tuple[np.ndarray, ...]:
    """Per scale, [flips, N, grid rows, grid cols, classes] logits of a
    batch of canvases (host arrays)."""
    return tuple(np.asarray(g) for g in jax.device_get(
        self._whole(weights, canvases)))

  def whole_views(self, grids: Sequence[np.ndarray], index: int,
                  canvas: tuple[int, int], scaled: tuple[int, int],
                  original: tuple[int, int]) -> list[blend.View]:
    """The views of image `index` of a `whole_grids` batch."""
    views = []
    for grid in grids:
      g = grid[:, index]
      rows, cols = g.shape[1:3]
      maps = [blend.pixel_map(o, s, n, (c - 1) / max(n - 1, 1))
              for o, s, n, c in zip(original, scaled, (rows, cols), canvas)]
      views.append(blend.WholeView(g, *maps))
    return views

  # -------------------------------------------------------------- slide

  def _announce(self, stride: int) -> None:
    if self._announced:
      return
    self._announced = True
    p = self.policy
    notes = []
    if p.tile() != p.tile_size and not p.fixed_input:
      notes.append(f'eval.tile_size {p.tile_size} -> {p.tile()} (k x the '
                   f'output stride {p.output_stride} + 1)')
    wanted = p.tile_stride if p.tile_stride is not None else None
    if wanted is not None and wanted != p.stride(stride):
      notes.append(f'eval.tile_stride {wanted} -> {p.stride(stride)} (a '
                   f"multiple of the model's {stride}-pixel logit grid)")
    print(f'Sliding window: tiles of {p.tile()} px every {p.stride(stride)} '
          f'px, {p.tile_batch} at a time' +
          (f' ({"; ".join(notes)})' if notes else '') + '.', flush=True)

  def batch_size(self, tiling) -> int:
    """Tiles per program call: `eval.tile_batch`, or fewer for an image
    with fewer tiles (one compiled program per image either way)."""
    return min(self.policy.tile_batch, tiling.count)

  def _tile_batch(self, scaled: np.ndarray, tiling, chunk) -> np.ndarray:
    """[batch_size, tile, tile, 3] normalised tiles (padding: the mean
    pixel; unused slots: padding too)."""
    tile = tiling.tile
    batch = np.full((self.batch_size(tiling), tile, tile, 3),
                    self.preprocessing.pad_value, np.float32)
    for k, (i, j) in enumerate(chunk):
      top, left = tiling.row_starts[i], tiling.col_starts[j]
      part = scaled[top:top + tile, left:left + tile]
      batch[k, :part.shape[0], :part.shape[1]] = (
          self.preprocessing.normalize(part))
    return batch

  def _core_weights(self, tiling, chunk) -> np.ndarray:
    """[tile_batch, rows, cols] 0/1 on each tile's backbone feature grid:
    the points inside the image and inside the tile's core (its part of
    the image nearest its centre), so that every point of the image counts
    once in the image's mean feature."""
    stride = self.policy.output_stride
    points = (tiling.tile - 1) // stride + 1
    margin = (tiling.tile - tiling.stride) // 2

    def axis(starts, index, size):
      lo = 0 if index == 0 else starts[index] + margin
      hi = size if index == len(starts) - 1 else starts[index + 1] + margin
      where = starts[index] + np.arange(points) * stride
      return ((where >= lo) & (where < min(hi, size))).astype(np.float32)

    out = np.zeros((self.batch_size(tiling), points, points), np.float32)
    for k, (i, j) in enumerate(chunk):
      out[k] = np.outer(axis(tiling.row_starts, i, tiling.size[0]),
                        axis(tiling.col_starts, j, tiling.size[1]))
    return out

  def image_features(self, weights: Any, scaled: np.ndarray, tiling,
                     on_tiles: Callable[[int], None] | None = None,
                     done: int = 0) -> np.ndarray:
    """[flips, 1, 1, C] the mean backbone feature of the whole (scaled)
    image, summed tile by tile over their cores (a first pass of the
    backbone alone), for every tile's image pooling."""
    tiles = [(i, j) for i in range(len(tiling.row_starts))
             for j in range(len(tiling.col_starts))]
    total, count = None, 0.0
    size = self.batch_size(tiling)
    for first in range(0, len(tiles), size):
      chunk = tiles[first:first + size]
      mask = self._core_weights(tiling, chunk)
      sums = np.asarray(self._feature_sums(
          weights, self._tile_batch(scaled, tiling, chunk), mask)[0],
                        np.float64)
      total = sums if total is None else total + sums
      count += float(mask.sum())
      if on_tiles is not None:
        on_tiles(done + first + len(chunk))
    return (total / count).astype(np.float32)[:, None, None, :]

  def slide_views(self, weights: Any, image: np.ndarray, *,
                  on_tiles: Callable[[int], None] | None = None
                  ) -> list[blend.SlideView]:
    """One SlideView per scale (flips stacked) of a uint8 [H, W, 3] image;
    their tiles run as the views' rows are needed (after a first pass over
    them for the image's mean feature, when the model pools it)."""
    p = self.policy
    stride = self.grid_stride()
    self._announce(stride)
    tile = p.tile()
    span = (tile - 1) // stride + 1
    height, width = image.shape[:2]
    views, done = [], 0
    for scale in p.scales:
      size = p.scaled_size(height, width, scale)
      scaled = scaled_uint8(image, size)
      tiling = p.tiling(size[0], size[1], stride)
      canvas = tiling.canvas
      grid = ((canvas[0] - 1) // stride + 1, (canvas[1] - 1) // stride + 1)
      context = None
      if self._uses_context and tiling.count > 1:  # One tile pools it all.
        context = self.image_features(weights, scaled, tiling, on_tiles,
                                      done)
        done += tiling.count

      def run(chunk, scaled=scaled, tiling=tiling, context=context,
              counter=[done]):  # pylint: disable=dangerous-default-value
        logits = self._tiles(weights, self._tile_batch(scaled, tiling, chunk),
                             context)[0]
        counter[0] += len(chunk)
        if on_tiles is not None:
          on_tiles(counter[0])
        return np.asarray(logits)[:, :len(chunk)]

      view = blend.SlideView(
          tile_starts=(tuple(s // stride for s in tiling.row_starts),
                       tuple(s // stride for s in tiling.col_starts)),
          tile_span=span, grid_shape=grid, run_tiles=run,
          batch=self.batch_size(tiling), flips=2 if p.flip else 1,
          weighting=p.tile_weighting,
          rows=blend.pixel_map(height, size[0], grid[0], stride),
          cols=blend.pixel_map(width, size[1], grid[1], stride))
      done += view.tiles
      views.append(view)
    return views

  # ---------------------------------------------------------- one image

  def segment(self, weights: Any, image: np.ndarray, *,
              with_confidence: bool = False, name: str = 'image'
              ) -> Segmentation:
    """Segments a uint8 [H, W, 3] RGB image at its own size.

    Raises:
      ConfigError: whole mode asked for an image it cannot take.
    """
    start = time.perf_counter()
    height, width = image.shape[:2]
    mode = self.policy.choose(height, width)
    scale = self.policy.scale_factor(height, width)
    if mode == 'whole':
      canvas, scaled = whole_canvas(self.policy, self.preprocessing, image)
      grids = self.whole_grids(weights, canvas[None])
      views = self.whole_views(grids, 0, canvas.shape[:2], scaled,
                               (height, width))
      tiles, progress = 0, None
    else:
      tiles = self.count_tiles(height, width)
      progress = TileProgress(name, tiles, height * width / 1e6)
      views = self.slide_views(weights, image, on_tiles=progress)
    classes, confidence = blend.finish(views, height, width,
                                       self.num_classes,
                                       with_confidence=with_confidence)
    if progress is not None:
      progress.close()
    return Segmentation(classes, confidence, mode, scale, tiles,
                        time.perf_counter() - start)
