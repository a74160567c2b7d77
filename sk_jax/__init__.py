"""sk-jax: StyleKernel (Learning Dynamic Style Kernels for Artistic Style Transfer, CVPR 2023) in JAX."""

from sk_jax.inference.compile_cache import enable_compile_cache
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io.weights import load_vgg16
from sk_jax.nn import Generator, ModelConfig, init_params, stylize_images
from sk_jax.nn.vgg import vgg16_features
from sk_jax.version import __version__ as __version__

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
