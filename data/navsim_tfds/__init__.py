"""The NAVSIM scene dataset as TFDS ArrayRecord (built without TensorFlow)."""

from data.navsim_tfds.navsim_tfds import Builder, NavsimConfig, features, random_scene

__all__ = ["Builder", "NavsimConfig", "features", "random_scene"]
