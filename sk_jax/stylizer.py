"""The one inference path: a generator and its encoder held on the device, stylizing images.

    from sk_jax.stylizer import Stylizer
    st = Stylizer.load("CKPT")                       # a generator checkpoint directory
    out = st.stylize("photo.jpg", "painting.jpg")    # (H, W, 3) float32 in [0, 1]

    z_s = st.encode_style(style)                     # a style encoded once ...
    frames_out = [st.apply(f, z_s)[0] for f in frames]   # ... applied to many contents

`sk-jax stylize`, `stylize-video`, `eval.py`, `sk-jax parity` and the benchmarks all
go through this class; training samples use the same pure function
(`sk_jax.models.generator.stylize_images`) under the training shardings.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax import checkpoint, images, weights
from sk_jax.models.generator import (
  Generator,
  ModelConfig,
  encode,
  pad_to_stride,
  stylize_images,
)

DEFAULT_SIZE = 512


@functools.partial(jax.jit, static_argnums=(2,))
def _encode(vgg_params, style, config: ModelConfig):
  style, _ = pad_to_stride(style)
  return encode(vgg_params, style, config.compute_dtype)


@functools.partial(jax.jit, static_argnums=(2,), static_argnames=("return_aux",))
def _apply(params, vgg_params, config: ModelConfig, z_s, content, alpha, return_aux=False):
  content, (h, w) = pad_to_stride(content)
  z_c = encode(vgg_params, content, config.compute_dtype)
  z_s = jnp.broadcast_to(z_s, (z_c.shape[0], *z_s.shape[1:]))
  image, aux = Generator(config).apply({"params": params}, z_c, z_s, alpha)
  image = image[:, :h, :w]
  if return_aux:
    aux = dict(aux, decoded=image)  # before clipping
  return jnp.clip(image, 0.0, 1.0), (aux if return_aux else aux["kept_fraction"])


@functools.partial(jax.jit, static_argnums=(2,))
def _forward(params, vgg_params, config: ModelConfig, content, style, alpha):
  return stylize_images(params, vgg_params, config, content, style, alpha)[0]


def _device(x, dtype=np.float32) -> jax.Array:
  """Host data to the device explicitly (so `jax.transfer_guard("disallow")` sees no hidden copy)."""
  return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x, dtype))


def _batch(x) -> jax.Array:
  x = _device(x)
  return x[None] if x.ndim == 3 else x


class Stylizer:
  """A generator with its encoder weights on the device once.

  Images are float arrays in [0, 1], (H, W, 3) or (B, H, W, 3), of any size (reflection-
  padded to multiples of 8 inside, cropped back). Each method is compiled once per shape.
  """

  def __init__(self, params, config: ModelConfig, vgg_params=None):
    self.config = config
    self.params = jax.device_put(params)
    self.vgg_params = jax.device_put(weights.load_vgg16(config.vgg_weights) if vgg_params is None
                                     else vgg_params)

  @classmethod
  def load(cls, path: str, vgg: str | None = None) -> "Stylizer":
    """From a generator checkpoint directory; `vgg` overrides the encoder weights it names."""
    params, config = checkpoint.load_generator(path)
    return cls(params, config, weights.load_vgg16(vgg or config.vgg_weights))

  def encode_style(self, style) -> jax.Array:
    """relu4_1 features of style images, (B, h, w, 512): computed once, applied to many contents."""
    return _encode(self.vgg_params, _batch(style), self.config)

  def apply(self, content, style_features, alpha=1.0, return_aux: bool = False):
    """Stylizes content images with encoded style features (batch B or 1).

    Returns (B, H, W, 3) in [0, 1] and the CGM's kept fraction (B,), or with
    return_aux the generator's whole aux dict (attention, mask, z_cs, kernels, z_bar, and
    the decoded image before clipping).
    """
    return _apply(self.params, self.vgg_params, self.config, style_features, _batch(content),
                  _device(alpha), return_aux=return_aux)

  def __call__(self, content, style, alpha=1.0) -> jax.Array:
    """Images in, images out, in one compiled program: (B, H, W, 3) in [0, 1]."""
    return _forward(self.params, self.vgg_params, self.config, _batch(content), _batch(style),
                    _device(alpha))

  def lower(self, content, style, alpha=1.0):
    """`__call__` lowered for these shapes (benchmarks time its `.compile()`d program)."""
    return _forward.lower(self.params, self.vgg_params, self.config, _batch(content), _batch(style),
                          _device(alpha))

  def stylize(self, content, style, *, size: int | None = DEFAULT_SIZE, style_size: int | None = None,
              alpha: float = 1.0, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One content with one style, from paths or (H, W, 3) arrays in [0, 1].

    size: the content's short side (None or 0: as it is); style_size: the style's
    (default: `size`). Returns (H, W, 3) float32 in [0, 1] at the resized content's size.
    """
    c = images.prepare(content, size, max_pixels)
    s = images.prepare(style, size if style_size is None else style_size, max_pixels)
    return np.asarray(self(c, s, alpha)[0])
