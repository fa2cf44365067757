"""Inference: images of any size in, class ids at their own size out.

* `policy`: how an image is scaled and run (whole or sliding window), from
  `config.eval`;
* `segmenter`: runs the policy for a model or an exported file, with its
  compiled programs;
* `blend`: logits on the model's grid -> class ids, in bands of rows;
* `runtimes`: exported files (LiteRT, onnxruntime, jax.export) as models;
* `programs`: XLA options for inference, the folded-BatchNorm copy,
  multi-scale probabilities.
"""

from deeplab_jax.inference.policy import InferencePolicy
from deeplab_jax.inference.programs import (compiler_options, folded, jit,
                                            predict_probabilities)
from deeplab_jax.inference.segmenter import Segmentation, Segmenter

__all__ = ['InferencePolicy', 'Segmentation', 'Segmenter',
           'compiler_options', 'folded', 'jit', 'predict_probabilities']
