"""One exception type per kind of user mistake.

Each is raised at the edge (config loading, dataset preparation, checkpoint
restore, weight import) with a message that names the problem and says what to
do. `main.py` prints the message alone, without a traceback.
"""


# Exit codes (main.py; the README's "Using it" lists them): finished; a
# mistake or failure, said in one line; stopped early and resumable
# (SIGTERM, one Ctrl-C: run the same command again); quit by a second
# Ctrl-C without saving.
EXIT_OK, EXIT_FAILED, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 75, 130


class DeepLabError(Exception):
  """Base class of every error meant for the user, not for a developer."""


class ConfigError(DeepLabError, ValueError):
  """A config key is unknown or a config value is out of its allowed range."""


class DatasetError(DeepLabError):
  """A dataset is missing, incomplete, or holds data that cannot be used."""


class CheckpointError(DeepLabError):
  """A checkpoint is missing, unreadable, or does not fit the model."""


class WeightImportError(DeepLabError):
  """Pretrained weights do not fit the configured model."""


class NonFiniteLossError(DeepLabError):
  """The training loss became NaN or Inf."""


class MissingDependencyError(DeepLabError, ImportError):
  """An optional package needed for this feature is not installed."""
