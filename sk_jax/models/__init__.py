"""Flax modules of StyleKernel; one file per component family."""

from sk_jax.models.generator import (
  Generator,
  ModelConfig,
  encode,
  init_params,
  stylize_images,
)
from sk_jax.models.vgg import vgg16_features

__all__ = ["Generator", "ModelConfig", "encode", "init_params", "stylize_images", "vgg16_features"]
