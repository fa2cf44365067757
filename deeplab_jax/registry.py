"""Parts chosen by name from a config: one registry per kind.

Each kind (backbones, heads, decoders, optimizers, learning-rate schedules,
losses, datasets, eval runtimes, export formats) keeps a `Registry` beside
its parts; adding a part is its module and one line in that registry. The
config's allowed values, the command line's help and the error for an
unknown name all read the registry, so no list of names is kept by hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Generic, TypeVar

from deeplab_jax.errors import ConfigError, DeepLabError

T = TypeVar('T')


class Registry(MutableMapping[str, T], Generic[T]):
  """{name: part} for one kind of part, named by a config key.

  Args:
    kind: what a part is, for messages ('head', 'optimizer').
    key: the config key that names one ('config.model.head.type').
    entries: the parts.
    error: the exception type an unknown name raises (`lookup`).
  """

  def __init__(self, kind: str, key: str, entries: Mapping[str, T] = (),
               error: type[DeepLabError] = ConfigError):
    self.kind, self.key, self.error = kind, key, error
    self._entries: dict[str, T] = dict(entries)

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __setitem__(self, name: str, part: T) -> None:
    self._entries[name] = part

  def __delitem__(self, name: str) -> None:
    del self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def lookup(self, name: str) -> T:
    """The part called `name`; `error` naming the key and the known names
    otherwise."""
    if name not in self._entries:
      raise self.error(
          f'{self.key} = {name!r} is not a known {self.kind}: use one of '
          f'{", ".join(map(repr, self._entries))}.')
    return self._entries[name]

  def register(self, name: str):
    """Decorator: `@REGISTRY.register('name')` over a part."""
    def add(part: T) -> T:
      self._entries[name] = part
      return part
    return add
