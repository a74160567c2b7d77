"""The exported function, shared by the deployable artifacts: a serialized StableHLO stylizer
(sk_jax.export.stablehlo), an ONNX model (sk_jax.export.onnx) and plain Orbax checkpoints.

Every artifact computes the same function, the whole stylizer (VGG-16 encoder up to
relu4_1, alignment and gate, kernel head, Eq. 6, decoder) with the weights embedded
and alpha fixed at 1. Its calling convention:

  inputs   content  float32 (b, 8*hc, 8*wc, 3), RGB in [0, 1]
           style    float32 (b, 8*hs, 8*ws, 3), RGB in [0, 1]
  output   stylized float32 (b, 8*hc, 8*wc, 3), RGB in [0, 1], at the content's size

Height and width are multiples of 8 (the encoder's stride) and at least 16 (the
reflection padding of Eq. 6 and of the decoder needs two rows at relu4_1), chosen
per call and independently for content and style. The batch b is shared: style i
goes with content i. Resize or pad on the caller's side (sk_jax pads by reflection,
`sk_jax.nn.generator.pad_to_stride`).

StableHLO (`jax.export`) keeps all five sizes symbolic and checks them when called:
a size that is not a multiple of 8 is refused. ONNX (jax2onnx, the optional extra
`sk-jax[onnx]`) keeps them dynamic too, but onnxruntime does not check the
multiple-of-8 rule; callers must.

docs/interop.md documents the formats, the ops that needed care, and measured parity.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.interop.parity import gate_gap
from sk_jax.io import files, images
from sk_jax.io.images import MIN_SIDE
from sk_jax.nn import vgg
from sk_jax.nn.generator import STRIDE, encode, generate

FORMATS = ("stablehlo", "onnx", "orbax")


INPUT_NAMES = ("content", "style")


OUTPUT_NAME = "stylized"


GATE_OUTPUT_NAME = "gate_mask"


# The encoder layers the stylizer runs (up to relu4_1); the rest of VGG-16 is not embedded.
ENCODER_LAYERS = vgg.CONVS[: vgg.CONVS.index("conv4_1") + 1]


def input_specs(batch: int | None = None):
  """(content, style) ShapeDtypeStructs with symbolic sizes: (b, 8*hc, 8*wc, 3), (b, 8*hs, 8*ws, 3).

  batch: a fixed batch size, or None for a symbolic one shared by both inputs.
  """
  b, hc, wc, hs, ws = jax.export.symbolic_shape(
    "b, hc, wc, hs, ws",
    constraints=(
      f"hc >= {MIN_SIDE // STRIDE}",
      f"wc >= {MIN_SIDE // STRIDE}",
      f"hs >= {MIN_SIDE // STRIDE}",
      f"ws >= {MIN_SIDE // STRIDE}",
    ),
  )
  if batch is not None:
    b = batch
  return (
    jax.ShapeDtypeStruct((b, STRIDE * hc, STRIDE * wc, 3), jnp.float32),
    jax.ShapeDtypeStruct((b, STRIDE * hs, STRIDE * ws, 3), jnp.float32),
  )


def stylizer_fn(params, vgg_params, config, gate_output: bool = False):
  """The stylizer as a pure function of (content, style), every weight a closed-over constant.

  Args:
    params, config: the generator (`sk_jax.artifacts.load_generator`).
    vgg_params: the encoder (`sk_jax.load_vgg16`); only conv1_1 ... conv4_1 are used.
    gate_output: also return the gate mask (b, Nc, Ns) of Eq. 5, as float32 0/1
      (for checking a converted model's hard decisions).

  Returns:
    f(content (b, H, W, 3), style (b, Hs, Ws, 3)) -> stylized (b, H, W, 3) in [0, 1],
    H, W, Hs, Ws multiples of 8. Equal to `stylize_images(...)[0]` at alpha 1 there.
  """
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  missing = [name for name in ENCODER_LAYERS if name not in vgg_params]
  if missing:
    raise InputError(f"VGG-16 weights lack layer(s) {', '.join(missing)}")
  vgg_used = {
    name: {k: np.asarray(v, np.float32) for k, v in vgg_params[name].items()}
    for name in ENCODER_LAYERS
  }

  def stylize(content, style):
    dtype = config.compute_dtype
    z_c, z_s = encode(vgg_used, content, dtype), encode(vgg_used, style, dtype)
    image, aux = generate(params, config, z_c, z_s)
    image = jnp.clip(image, 0.0, 1.0)
    if gate_output:
      return image, aux["mask"].astype(jnp.float32)
    return image

  return stylize


def reference_gate(params, vgg_params, config, content, style):
  """JAX's gate decisions and how far each lies from its threshold.

  Returns (mask (b, Nc, Ns) float32, gap (b, Nc, Ns)) with gap = |A - T| / max(|T|, 1/Ns),
  the quantity `sk-jax parity` holds flipped decisions to (`sk_jax.interop.parity.GATE_BAND`).
  """
  dtype = config.compute_dtype
  z_c, z_s = encode(vgg_params, content, dtype), encode(vgg_params, style, dtype)
  _, aux = generate(params, config, z_c, z_s)
  return np.asarray(aux["mask"], np.float32), gate_gap(aux["attention"], aux["threshold"])


def write_file(path: str, write) -> None:
  """Atomic write (temp file beside `path`, then rename); OS errors become InputErrors."""
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, expected a file name")
  try:
    images.write_atomic(path, write)
  except OSError as e:
    raise InputError(f"{path}: cannot write ({e.strerror or e})") from None


def is_stablehlo_stylizer(path: str) -> bool:
  """True for a file `save_stablehlo` wrote: a serialized jax.export of (content, style)."""
  try:
    with open(path, "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    return len(exported.in_avals) == 2 and len(exported.out_avals) in (1, 2)
  except Exception:  # not a flatbuffer of jax.export, or of another version
    return False


def is_onnx_stylizer(path: str) -> bool:
  """True for a file `save_onnx` wrote: an ONNX model with inputs (content, style) -> stylized."""
  try:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return tuple(i.name for i in graph.input) == INPUT_NAMES and graph.output[0].name == OUTPUT_NAME
  except Exception:  # onnx missing, or not an ONNX protobuf
    return False


def check_output(path: str, fmt: str, inputs=(), overwrite: bool = False) -> None:
  """Refuses an output path that cannot be written or would replace what is not ours
  (`sk_jax.io.files.check_outputs`), before any work is done."""
  if fmt == "orbax":
    out = files.checkpoint(path)
  else:
    owned = is_stablehlo_stylizer if fmt == "stablehlo" else is_onnx_stylizer
    out = files.export(path, owned, f"{fmt} stylizer")
  files.check_outputs([out], inputs, overwrite)
