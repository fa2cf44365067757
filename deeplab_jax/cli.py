"""What main.py runs for each --mode, after validating the config."""

from __future__ import annotations

from typing import Any

from deeplab_jax.config import validate_config
from deeplab_jax.errors import ConfigError


def _require_workdir(mode: str, workdir: str | None) -> str:
  if not workdir:
    raise ConfigError(f'--mode={mode} needs --workdir=DIR (where checkpoints '
                      'and results live).')
  return workdir


def run(config: Any, *, mode: str, workdir: str | None = None,
        images: str | None = None) -> None:
  validate_config(config)
  if mode == 'summary':
    from deeplab_jax.models import create_model, format_summary  # pylint: disable=g-import-not-at-top
    model = create_model(config.model)
    print(format_summary(model, depth=1))
    print()
    print(format_summary(model.backbone, depth=1).replace(
        'module', 'backbone', 1))
    return
  raise ConfigError(f'--mode={mode} is not available yet.')
