"""Flax modules of StyleKernel; one file per component family."""

from sk_jax.models.generator import Generator, ModelConfig, encode, init_params, stylize_images
from sk_jax.models.vgg import load_vgg16, vgg16_features

__all__ = ["Generator", "ModelConfig", "encode", "init_params", "stylize_images",
           "load_vgg16", "vgg16_features"]
