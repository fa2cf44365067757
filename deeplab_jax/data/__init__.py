"""Datasets (TFDS builders), augmentation and grain input pipelines."""
