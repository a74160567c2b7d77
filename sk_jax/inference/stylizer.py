"""The one inference path: a generator and its encoder held on the device, stylizing images.

    from sk_jax.inference.stylizer import Stylizer
    st = Stylizer.load()                             # the bundled generator, or .load("CKPT_DIR")
    out = st.stylize("photo.jpg", "painting.jpg")    # (H, W, 3) float32 in [0, 1]
    out = st.stylize("photo.jpg", ["a.jpg", "b.jpg"], style_weights=[0.7, 0.3],
                     preserve_color=True)            # the controls of `sk-jax stylize`

    z_s = st.encode_style(style)                     # a style encoded once ...
    frames_out = [st.apply(f, z_s)[0] for f in frames]   # ... applied to many contents

`sk-jax stylize`, `stylize-video`, `eval.py`, `sk-jax parity` and the benchmarks all
go through this class; training samples use the same pure function
(`sk_jax.nn.generator.stylize_images`) under the training shardings.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.inference import bundled, controls
from sk_jax.inference.buckets import to_bucket
from sk_jax.inference.compile_cache import DEFAULT as DEFAULT_CACHE
from sk_jax.inference.compile_cache import enable_compile_cache
from sk_jax.inference.programs import Programs
from sk_jax.io import images, weights
from sk_jax.nn import ops
from sk_jax.nn.generator import (
  STRIDE,
  ModelConfig,
  encode,
  generate,
  pad_to_stride,
  stylize_images,
)

DEFAULT_SIZE = 512
# The attention's float32 temporaries may take this much; above it the attention runs in
# chunks of content positions (same results; docs/method.md, "Attention in bounded memory").
DEFAULT_ATTENTION_MB = 1024
# Encoded styles a Stylizer keeps for `stylize` (a directory run or a web page reuses them).
STYLE_CACHE = 8


def _features(vgg_params, config: ModelConfig, images, hw=None):
  """relu4_1 of images padded to multiples of 8, and the images' own (H, W) to crop back to;
  hw: the true size of images padded to a size bucket."""
  images, size = pad_to_stride(images)
  return encode(vgg_params, images, config.compute_dtype, hw), size


@functools.partial(jax.jit, static_argnums=(2,))
def _encode(vgg_params, style, config: ModelConfig, hw=None):
  return _features(vgg_params, config, style, hw)[0]


# config is static by position and by name (Programs passes it by name)
@functools.partial(jax.jit, static_argnums=(2,), static_argnames=("config", "extra", "query_chunk"))
def _apply(
  params,
  vgg_params,
  config: ModelConfig,
  z_styles,
  content,
  style_weights=None,
  alpha=1.0,
  previous=None,
  smooth=0.0,
  extra="kept",
  query_chunk=None,
  content_hw=None,
  style_hw=None,
):
  """Content images and encoded styles -> (images in [0, 1], extra): `generate` (the one
  forward pass) between the encoder and the crop. extra: "kept" (the kept fraction),
  "kernels" (the kept fraction and the kernels used, float32) or "aux" (the whole aux).
  content_hw, style_hw: true image sizes (a tuple for several styles) inside size buckets;
  the image is then the bucket's, to be cropped by the caller."""
  z_c, (h, w) = _features(vgg_params, config, content, content_hw)
  if content_hw is not None:
    content_hw = content_hw // STRIDE
    style_hw = jax.tree.map(lambda hw: hw // STRIDE, style_hw)
  batch = lambda z: jnp.broadcast_to(z, (z_c.shape[0], *z.shape[1:]))
  z_styles = tuple(map(batch, z_styles)) if isinstance(z_styles, tuple) else batch(z_styles)
  if style_weights is not None:
    style_weights = jnp.broadcast_to(style_weights, (*z_c.shape[:3], len(z_styles)))
  image, aux = generate(
    params,
    config,
    z_c,
    z_styles,
    style_weights,
    alpha,
    previous,
    smooth,
    query_chunk,
    content_hw,
    style_hw,
  )
  image = image[..., :h, :w, :]
  # One kept fraction per image: (B,), or (A, B) for an alpha strip (the gate precedes alpha).
  aux["kept_fraction"] = jnp.broadcast_to(aux["kept_fraction"], image.shape[:-3])
  if extra == "aux":
    extra = dict(aux, decoded=image)  # before clipping
  elif extra == "kernels":
    kernels = tuple(aux[k].astype(jnp.float32) for k in ("f_v", "f_h", "bias"))
    extra = aux["kept_fraction"], kernels
  else:
    extra = aux["kept_fraction"]
  return jnp.clip(image, 0.0, 1.0), extra


@functools.partial(jax.jit, static_argnums=(2,), static_argnames=("query_chunk",))
def _forward(params, vgg_params, config: ModelConfig, content, style, alpha, query_chunk=None):
  image, aux = stylize_images(params, vgg_params, config, content, style, alpha, query_chunk)
  return image, aux["kept_fraction"]


def _device(x, dtype=np.float32) -> jax.Array:
  """Host data to the device explicitly (so `jax.transfer_guard("disallow")` sees no hidden copy)."""
  return x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x, dtype))


def _batch(x) -> jax.Array:
  x = _device(x)
  return x[None] if x.ndim == 3 else x


class Stylizer:
  """A generator with its encoder weights on the device once.

  Images are float arrays in [0, 1], (H, W, 3) or (B, H, W, 3), of any size (reflection-
  padded to multiples of 8 inside, cropped back). Each method is compiled once per shape;
  `stylize` (with buckets, the default) once per size bucket: images are padded up to
  `sk_jax.inference.buckets` sizes and the network masked so that the results are those of the unpadded images.
  """

  def __init__(
    self,
    params,
    config: ModelConfig,
    vgg_params=None,
    attention_mb: float = DEFAULT_ATTENTION_MB,
    compile_cache: str | None = DEFAULT_CACHE,
    buckets: bool = True,
  ):
    """attention_mb: memory the attention may take; larger attentions run in chunks of
    content positions (`ops.query_chunk_for`), with the same results. compile_cache: where
    compiled programs persist across processes (`sk_jax.enable_compile_cache`: "default",
    a directory or "off"; None leaves JAX's configuration as it is); with it, `stylize` also
    keeps its traced programs there (`sk_jax.inference.programs`). buckets: `stylize` pads
    images to size buckets (False: compiles for every image size)."""
    directory = None if compile_cache is None else enable_compile_cache(compile_cache)
    self._programs = Programs(directory and os.path.join(directory, "programs"))
    self.config, self.attention_mb, self.buckets = config, attention_mb, buckets
    self._styles = collections.OrderedDict()
    self.params = jax.device_put(params)
    self.vgg_params = jax.device_put(
      weights.load_vgg16(config.vgg_weights) if vgg_params is None else vgg_params
    )

  @classmethod
  def load(
    cls,
    path: str | None = bundled.BUNDLED,
    vgg: str | None = None,
    attention_mb: float = DEFAULT_ATTENTION_MB,
    compile_cache: str | None = DEFAULT_CACHE,
    buckets: bool = True,
  ) -> "Stylizer":
    """From a generator checkpoint directory, or the bundled generator (None or "bundled");
    `vgg` overrides the encoder weights it names."""
    params, config = bundled.resolve(path)
    vgg_params = weights.load_vgg16(vgg or config.vgg_weights)
    return cls(params, config, vgg_params, attention_mb, compile_cache, buckets)

  def _chunk_for_features(self, content, style_features) -> int | None:
    return self.query_chunk(content.shape[1:3], np.multiply(style_features.shape[1:3], STRIDE))

  def query_chunk(self, content_hw, style_hw) -> int | None:
    """Content positions per attention chunk for images of these sizes (None: all at once)."""
    positions = lambda hw: -(-hw[0] // STRIDE) * -(-hw[1] // STRIDE)
    return ops.query_chunk_for(
      positions(content_hw), positions(style_hw), self.attention_mb * 2**20
    )

  def encode_style(self, style) -> jax.Array:
    """relu4_1 features of style images, (B, h, w, 512): computed once, applied to many contents."""
    return _encode(self.vgg_params, _batch(style), self.config)

  def apply(self, content, style_features, alpha=1.0, return_aux: bool = False):
    """Stylizes content images with encoded style features (batch B or 1).

    Returns (B, H, W, 3) in [0, 1] and the CGM's kept fraction (B,), or with
    return_aux the generator's whole aux dict (attention, mask, z_cs, kernels, z_bar, and
    the decoded image before clipping).
    """
    content = _batch(content)
    chunk = self._chunk_for_features(content, style_features)
    return _apply(
      self.params,
      self.vgg_params,
      self.config,
      style_features,
      content,
      alpha=_device(alpha),
      extra="aux" if return_aux else "kept",
      query_chunk=chunk,
    )

  def apply_mixed(self, content, style_features: Sequence, style_weights=None, alphas=(1.0,)):
    """Stylizes content with several encoded styles mixed in Z_cs, for several alphas at once.

    style_weights: (S,) per style (None: equal), or (ceil(H/8), ceil(W/8), S) per content position
    (`controls.mask_weights`); they are used as given. alphas: (A,). Returns (A, B, H, W, 3)
    in [0, 1] and the kept fraction (A, B), from one compiled call.
    """
    z = tuple(style_features)
    w = style_weights
    w = controls.style_weights(None, len(z)) if w is None else np.asarray(w, np.float32)
    content = _batch(content)
    chunk = self._chunk_for_features(content, z[0])
    return _apply(
      self.params,
      self.vgg_params,
      self.config,
      z,
      content,
      _device(w),
      _device(controls.check_alphas(alphas)),
      query_chunk=chunk,
    )

  def apply_smoothed(self, content, style_features, alpha=1.0, previous=None, beta=0.0):
    """`apply` for one frame of a clip, with the kernels (F_v, F_h, B) averaged as
    beta * previous + (1 - beta) * this frame's; previous=None for the first frame.

    Returns (B, H, W, 3) in [0, 1], the kept fraction (B,) and the kernels used (pass them
    as `previous` for the next frame).
    """
    content = _batch(content)
    chunk = self._chunk_for_features(content, style_features)
    images, (kept, kernels) = _apply(
      self.params,
      self.vgg_params,
      self.config,
      style_features,
      content,
      alpha=_device(alpha),
      previous=previous,
      smooth=_device(beta),
      extra="kernels",
      query_chunk=chunk,
    )
    return images, kept, kernels

  def __call__(self, content, style, alpha=1.0) -> jax.Array:
    """Images in, images out, in one compiled program: (B, H, W, 3) in [0, 1]."""
    return self._call(content, style, alpha)[0]

  def _forward_args(self, content, style, alpha):
    content, style = _batch(content), _batch(style)
    chunk = self.query_chunk(content.shape[1:3], style.shape[1:3])
    args = (self.params, self.vgg_params, self.config, content, style, _device(alpha))
    return args, {"query_chunk": chunk}

  def _call(self, content, style, alpha):
    args, kwargs = self._forward_args(content, style, alpha)
    return _forward(*args, **kwargs)

  def lower(self, content, style, alpha=1.0):
    """`__call__` lowered for these shapes (benchmarks time its `.compile()`d program)."""
    args, kwargs = self._forward_args(content, style, alpha)
    return _forward.lower(*args, **kwargs)

  def compiled(self, content, style, alpha=1.0):
    """`__call__` compiled for these inputs: a function of no arguments that runs the program
    on them (what `eval.py` times, without the dispatch of a jitted call)."""
    args, kwargs = self._forward_args(content, style, alpha)
    program = _forward.lower(*args, **kwargs).compile()
    params, vgg_params, _, content, style, alpha = args
    return lambda: program(params, vgg_params, content, style, alpha)

  def stylize(
    self,
    content,
    style,
    *,
    size: int | None = DEFAULT_SIZE,
    style_size: int | None = None,
    alpha: float | Sequence[float] = 1.0,
    style_weights: Sequence[float] | None = None,
    mask=None,
    preserve_color: bool = False,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    return_kept: bool = False,
  ) -> np.ndarray:
    """One content with one style or a mix of styles, from paths or (H, W, 3) arrays in [0, 1].

    size: the content's short side (None or 0: as it is); style_size: the styles'
    (default: `size`). style: one image, or a list of them mixed in Z_cs by
    `style_weights` (non-negative, normalised; default equal) or, with `mask` (an
    (H', W', 3) image or its path, one flat colour per style, darkest first), one style per
    masked region. preserve_color keeps the content's colours (YIQ luminance-only transfer).
    Returns (H, W, 3) float32 in [0, 1] at the resized content's size, or for a sequence
    of alphas (A, H, W, 3), computed in one call with the styles encoded once; with
    return_kept also the CGM's kept fraction (for a mix: weighted by each style's share).
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
      raise InputError("stylize: no style given")
    alphas = controls.check_alphas(alpha)
    c = images.prepare(content, size, max_pixels)
    s = [images.prepare(x, size if style_size is None else style_size, max_pixels) for x in styles]
    controls.check_mix(style_weights, mask)
    if mask is not None:
      m = images.load_image(mask, max_pixels) if isinstance(mask, str) else mask
      w = controls.mask_weights(m, c.shape[:2], len(s))
    else:
      w = controls.style_weights(style_weights, len(s))
    single = len(s) == 1 and mask is None and style_weights is None and np.ndim(alpha) == 0
    if self.buckets:
      out, kept = self._stylize_in_buckets(c, s, None if single else w, alphas)
    elif single:
      out, kept = self._call(c, s[0], float(alphas[0]))  # (1, H, W, 3), (1,)
    else:
      out, kept = self.apply_mixed(c, [self.encode_style(x) for x in s], w, alphas)
      out, kept = out[:, 0], kept[:, 0]  # (A, H, W, 3), (A,)
    out = np.asarray(out)
    if preserve_color:
      out = controls.preserve_color(out, c)
    out = out[0] if np.ndim(alpha) == 0 else out
    return (out, float(np.asarray(kept)[0])) if return_kept else out

  def _bucketed_style(self, style) -> tuple[jax.Array, np.ndarray]:
    """A style image's features in its size bucket and its size: encoded once per Stylizer
    (the last STYLE_CACHE styles are kept, keyed by their pixels)."""
    style = np.ascontiguousarray(style, np.float32)
    key = (style.shape, hashlib.sha256(style.tobytes()).hexdigest())
    if key not in self._styles:
      image, hw = to_bucket(style)
      features = self._programs(
        _encode, {"config": self.config}, self.vgg_params, _device(image), hw=_device(hw, np.int32)
      )
      self._styles[key] = features, hw
      while len(self._styles) > STYLE_CACHE:
        self._styles.popitem(last=False)
    self._styles.move_to_end(key)
    return self._styles[key]

  def _stylize_in_buckets(self, content, styles, weights, alphas):
    """`stylize`'s computation on images padded to their size buckets, cropped back: one
    style and one alpha with weights None, else the mix of `apply_mixed`. Returns
    ((1 or A), H, W, 3) and the kept fraction ((1 or A),)."""
    image, hw = to_bucket(content)
    z = [self._bucketed_style(s) for s in styles]
    statics = {"config": self.config, "query_chunk": self._chunk_for_features(image, z[0][0])}
    args = (self.params, self.vgg_params)
    common = dict(content=_device(image), content_hw=_device(hw, np.int32))
    if weights is None:
      out, kept = self._programs(
        _apply,
        statics,
        *args,
        z_styles=z[0][0],
        alpha=_device(alphas[0]),
        style_hw=_device(z[0][1], np.int32),
        **common,
      )
    else:
      if np.ndim(weights) == 3:
        # per content position, at 1/8: zeros over the bucket's padding
        full = np.zeros((image.shape[1] // STRIDE, image.shape[2] // STRIDE, len(z)), np.float32)
        full[: weights.shape[0], : weights.shape[1]] = weights
        weights = full
      out, kept = self._programs(
        _apply,
        statics,
        *args,
        z_styles=tuple(f for f, _ in z),
        style_weights=_device(weights),
        alpha=_device(alphas),
        style_hw=tuple(_device(hw, np.int32) for _, hw in z),
        **common,
      )
      out, kept = out[:, 0], kept[:, 0]
    return np.asarray(out)[:, : content.shape[0], : content.shape[1]], kept
