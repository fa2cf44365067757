"""The shipped configs, installed as the package `deeplab_jax.configs` so
that `deeplab-jax --config=NAME` finds them from any folder."""
