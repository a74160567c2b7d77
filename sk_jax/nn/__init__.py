"""Flax modules of StyleKernel; one file per component family."""

from sk_jax.nn.generator import (
  Generator,
  ModelConfig,
  encode,
  init_params,
  stylize_images,
)
from sk_jax.nn.vgg import vgg16_features

__all__ = ["Generator", "ModelConfig", "encode", "init_params", "stylize_images", "vgg16_features"]
