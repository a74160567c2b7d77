"""Deployable artifacts: a serialized StableHLO stylizer, an ONNX model, and plain Orbax checkpoints.

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
`sk_jax.models.generator.pad_to_stride`).

StableHLO (`jax.export`) keeps all five sizes symbolic and checks them when called:
a size that is not a multiple of 8 is refused. ONNX (jax2onnx, the optional extra
`sk-jax[onnx]`) keeps them dynamic too, but onnxruntime does not check the
multiple-of-8 rule; callers must.

docs/interop.md documents the formats, the ops that needed care, and measured parity.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.interop import port
from sk_jax.interop.parity import gate_gap
from sk_jax.io import files, images
from sk_jax.io.images import MIN_SIDE
from sk_jax.nn import vgg
from sk_jax.nn.generator import STRIDE, encode, generate

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMATS = ("stablehlo", "onnx", "orbax")
INPUT_NAMES = ("content", "style")
OUTPUT_NAME = "stylized"
GATE_OUTPUT_NAME = "gate_mask"
# The encoder layers the stylizer runs (up to relu4_1); the rest of VGG-16 is not embedded.
ENCODER_LAYERS = vgg.CONVS[: vgg.CONVS.index("conv4_1") + 1]
ONNX_EXTRA_HINT = "ONNX export needs the optional extra: pip install 'sk-jax[onnx]'"


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
    params, config: the generator (`sk_jax.checkpoint.load_generator`).
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


# ----------------------------------------------------------------------------- StableHLO


def check_platforms(platforms) -> tuple[str, ...]:
  platforms = tuple(p.strip().lower() for p in platforms if p.strip())
  if not platforms:
    raise InputError(f"--platforms: name at least one of {', '.join(PLATFORMS)}")
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad:
    raise InputError(
      f"--platforms: unknown platform {bad[0]!r}; choose from {', '.join(PLATFORMS)}"
    )
  return tuple(dict.fromkeys(platforms))


def export_stablehlo(params, vgg_params, config, platforms=("cpu",)) -> jax.export.Exported:
  """Exports the stylizer with `jax.export`: symbolic batch and sizes, weights embedded.

  Args:
    params, vgg_params, config: as for `stylizer_fn`.
    platforms: any of "cpu", "cuda", "rocm", "tpu"; one artifact serves all of them.

  Returns:
    The `jax.export.Exported`; `.serialize()` gives the bytes that `save_stablehlo` writes.
  """
  platforms = check_platforms(platforms)
  return jax.export.export(jax.jit(stylizer_fn(params, vgg_params, config)), platforms=platforms)(
    *input_specs()
  )


def save_stablehlo(path: str, exported: jax.export.Exported) -> str:
  """Writes `exported.serialize()` to `path` atomically; returns the absolute path."""
  blob = exported.serialize()
  _write_file(path, lambda tmp: _write_bytes(tmp, blob))
  return os.path.abspath(path)


def load_stablehlo(path: str) -> jax.export.Exported:
  """Reads a serialized stylizer: `jax.export.deserialize` of the file's bytes (needs only jax).

  Call it as `exported.call(content, style)`.
  """
  files.check_input(path, "a serialized StableHLO file")
  with open(path, "rb") as f:
    blob = f.read()
  try:
    return jax.export.deserialize(bytearray(blob))
  except Exception as e:  # flatbuffer and version errors have no common type
    raise InputError(f"{path}: not a serialized jax.export artifact ({type(e).__name__})") from None


# ----------------------------------------------------------------------------- ONNX


def onnx_available() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnx"))


def _fix_maxpool(model) -> int:
  """Rewrites jax2onnx's 4-D MaxPool into the 2-D NCHW one that onnxruntime runs.

  jax2onnx lowers lax.reduce_window(max) over NHWC (window (1, 2, 2, 1)) to a MaxPool
  with a 4-D kernel on a (1, 1, N, H, W, C) tensor; onnxruntime only pools 1-3
  spatial dims. Each such node becomes Squeeze -> Transpose(NCHW) -> MaxPool(2x2) ->
  Transpose(NHWC) -> Unsqueeze, the same function. Returns the number rewritten.
  """
  import onnx
  from onnx import helper

  graph = model.graph
  nodes, count = [], 0
  axes = helper.make_tensor("sk_maxpool_axes01", onnx.TensorProto.INT64, [2], [0, 1])
  for node in graph.node:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type != "MaxPool" or len(attrs.get("kernel_shape", ())) != 4:
      nodes.append(node)
      continue
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1] * 4))
    if (
      kernel[0] != 1
      or kernel[3] != 1
      or strides[0] != 1
      or strides[3] != 1
      or any(attrs.get("pads", ()))
    ):
      raise RuntimeError(f"unexpected MaxPool {node.name}: kernel {kernel}, strides {strides}")
    name, x, y = node.name, node.input[0], node.output[0]
    nodes += [
      helper.make_node("Squeeze", [x, axes.name], [f"{name}_nhwc"], name=f"{name}_squeeze"),
      helper.make_node(
        "Transpose", [f"{name}_nhwc"], [f"{name}_nchw"], perm=[0, 3, 1, 2], name=f"{name}_to_nchw"
      ),
      helper.make_node(
        "MaxPool",
        [f"{name}_nchw"],
        [f"{name}_pooled"],
        kernel_shape=kernel[1:3],
        strides=strides[1:3],
        name=f"{name}_2d",
      ),
      helper.make_node(
        "Transpose",
        [f"{name}_pooled"],
        [f"{name}_pooled_nhwc"],
        perm=[0, 2, 3, 1],
        name=f"{name}_to_nhwc",
      ),
      helper.make_node(
        "Unsqueeze", [f"{name}_pooled_nhwc", axes.name], [y], name=f"{name}_unsqueeze"
      ),
    ]
    count += 1
  if count:
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.append(axes)
  return count


def _add_size_checks(model) -> None:
  """Makes onnxruntime refuse inputs whose height or width is not a multiple of 8.

  ONNX has no assertion op, so each input passes through Reshapes that exist only for a
  multiple of 8: (b, H, W, 3) -> (b, H, W/8, 24) and back, then the same with H and W
  swapped. onnxruntime's error names the node, e.g. content_width_must_be_a_multiple_of_8.
  """
  from onnx import TensorProto, helper

  graph = model.graph
  graph.initializer.extend(
    [helper.make_tensor("sk_check_shape", TensorProto.INT64, [4], [0, 0, -1, 3 * STRIDE])]
  )
  checks = []
  for name in INPUT_NAMES:
    x = name
    for axis in ("width", "height"):
      tag = f"{name}_{axis}_must_be_a_multiple_of_{STRIDE}"
      src = x
      if axis == "height":
        checks.append(
          helper.make_node("Transpose", [x], [f"{tag}_t"], perm=[0, 2, 1, 3], name=f"{tag}_t")
        )
        src = f"{tag}_t"
      checks += [
        helper.make_node("Shape", [src], [f"{tag}_shape"], name=f"{tag}_shape"),
        helper.make_node("Reshape", [src, "sk_check_shape"], [f"{tag}_r"], name=tag),
        helper.make_node(
          "Reshape", [f"{tag}_r", f"{tag}_shape"], [f"{tag}_back"], name=f"{tag}_back"
        ),
      ]
      x = f"{tag}_back"
      if axis == "height":
        checks.append(
          helper.make_node("Transpose", [x], [f"{tag}_ok"], perm=[0, 2, 1, 3], name=f"{tag}_ok")
        )
        x = f"{tag}_ok"
    for node in graph.node:
      for i, inp in enumerate(node.input):
        if inp == name:
          node.input[i] = x
  nodes = checks + list(graph.node)
  del graph.node[:]
  graph.node.extend(nodes)


def export_onnx(params, vgg_params, config, gate_output: bool = False):
  """Converts the stylizer to ONNX with jax2onnx; dynamic batch, heights and widths.

  Inputs are named "content" and "style", the output "stylized" (and "gate_mask",
  (b, Nc, Ns) float 0/1, with gate_output=True). Returns an `onnx.ModelProto`.
  Raises InputError when the extra is not installed.
  """
  if not onnx_available():
    raise InputError(ONNX_EXTRA_HINT)
  from jax2onnx import to_onnx

  fn = stylizer_fn(params, vgg_params, config, gate_output)
  outputs = [OUTPUT_NAME, GATE_OUTPUT_NAME] if gate_output else [OUTPUT_NAME]
  # Quiet: jax2onnx's optional dm_pix plugins do not import with jax 0.10 (warnings),
  # onnx_ir warns about untyped shape constants, and jax2onnx 0.13 prints debugging
  # lines from its Flax Conv plugin on stdout.
  loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
  levels = [log.level for log in loggers]
  for log in loggers:
    log.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      model = to_onnx(
        fn,
        list(input_specs()),
        model_name="sk_jax_stylizer",
        input_names=list(INPUT_NAMES),
        output_names=outputs,
      )
  finally:
    for log, level in zip(loggers, levels):
      log.setLevel(level)
  _fix_maxpool(model)
  _add_size_checks(model)
  return model


def save_onnx(path: str, model) -> str:
  """Writes an ONNX model atomically (weights inside the file); returns the absolute path."""
  import onnx

  _write_file(path, lambda tmp: onnx.save_model(model, tmp))
  return os.path.abspath(path)


def onnx_session(path_or_model, threads: int | None = None):
  """An onnxruntime CPU InferenceSession of a file or ModelProto."""
  import onnxruntime as ort

  opts = ort.SessionOptions()
  if threads:
    opts.intra_op_num_threads = threads
  src = (
    path_or_model
    if isinstance(path_or_model, (str, os.PathLike))
    else path_or_model.SerializeToString()
  )
  return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- checking


def reference_gate(params, vgg_params, config, content, style):
  """JAX's gate decisions and how far each lies from its threshold.

  Returns (mask (b, Nc, Ns) float32, gap (b, Nc, Ns)) with gap = |A - T| / max(|T|, 1/Ns),
  the quantity `sk-jax parity` holds flipped decisions to (`sk_jax.parity.GATE_BAND`).
  """
  dtype = config.compute_dtype
  z_c, z_s = encode(vgg_params, content, dtype), encode(vgg_params, style, dtype)
  _, aux = generate(params, config, z_c, z_s)
  return np.asarray(aux["mask"], np.float32), gate_gap(aux["attention"], aux["threshold"])


def relative_error(ours, ref) -> float:
  """max |ours - ref| / max |ref|: `sk_jax.port.relative_error`'s relative part."""
  return port.relative_error(ours, ref)[1]


def cast_params(params, dtype: str | None):
  """Floating leaves cast to `dtype` ("bfloat16"; None or "float32" keep float32), as numpy."""
  if dtype in (None, "float32"):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  if dtype != "bfloat16":
    raise InputError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
  return jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), jax.device_get(params))


# ----------------------------------------------------------------------------- files


def _write_bytes(path: str, blob: bytes) -> None:
  with open(path, "wb") as f:
    f.write(blob)


def _write_file(path: str, write) -> None:
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
  (`sk_jax.files.check_outputs`), before any work is done."""
  if fmt == "orbax":
    out = files.checkpoint(path)
  else:
    owned = is_stablehlo_stylizer if fmt == "stablehlo" else is_onnx_stylizer
    out = files.export(path, owned, f"{fmt} stylizer")
  files.check_outputs([out], inputs, overwrite)
