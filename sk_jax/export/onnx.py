"""ONNX export (jax2onnx, the optional extra `sk-jax[onnx]`): sizes stay dynamic, but onnxruntime
does not check the multiple-of-8 rule, so callers must; sk_jax.export.function has the calling
convention and docs/interop.md the ops that needed care."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os

from sk_jax.errors import InputError
from sk_jax.export.function import (
  GATE_OUTPUT_NAME,
  INPUT_NAMES,
  OUTPUT_NAME,
  input_specs,
  stylizer_fn,
  write_file,
)
from sk_jax.nn.generator import STRIDE

ONNX_EXTRA_HINT = "ONNX export needs the optional extra: pip install 'sk-jax[onnx]'"


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

  write_file(path, lambda tmp: onnx.save_model(model, tmp))
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
