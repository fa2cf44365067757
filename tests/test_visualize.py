"""Result pictures: the confusion-matrix figure stays drawable for many
classes."""

import numpy as np
import pytest

from deeplab_jax import visualize


@pytest.mark.parametrize('classes,inches', [(21, 0.38 * 21 + 2), (150, 20.0)])
def test_confusion_figure_names_every_class_within_20_inches(classes, inches):
  confusion = np.random.default_rng(0).integers(0, 100, (classes, classes))
  names = [f'class{i}' for i in range(classes)]
  fig = visualize.confusion_figure(confusion, names)
  assert fig.get_size_inches() == pytest.approx((inches, inches))
  ax, = fig.axes
  assert [t.get_text() for t in ax.get_xticklabels()] == names
  assert [t.get_text() for t in ax.get_yticklabels()] == names
  # Rows are normalised: each row of the drawn matrix sums to 1.
  drawn = ax.images[0].get_array()
  np.testing.assert_allclose(np.sum(drawn, axis=1), 1.0, rtol=1e-6)
