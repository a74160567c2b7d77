"""sk-jax: StyleKernel (Learning Dynamic Style Kernels for Artistic Style Transfer, CVPR 2023) in JAX."""

from sk_jax.compile_cache import enable_compile_cache
from sk_jax.models import Generator, ModelConfig, init_params, stylize_images
from sk_jax.models.vgg import vgg16_features
from sk_jax.stylizer import Stylizer
from sk_jax.weights import load_vgg16

__version__ = "0.1.0"
__all__ = [
  "Generator",
  "ModelConfig",
  "Stylizer",
  "enable_compile_cache",
  "init_params",
  "stylize_images",
  "load_vgg16",
  "vgg16_features",
]
