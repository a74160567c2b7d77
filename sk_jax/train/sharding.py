"""Where arrays live: the device mesh, the shardings of state and batch, multi-host setup.

All sharding decisions of training are made here. The mesh has two axes:
  "data"   the batch is split along it (data parallelism);
  "model"  parameters (and their optimiser moments) are split along it when its size
           is > 1 (FSDP-style: the largest dimension that divides), else replicated.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sk_jax.errors import InputError

DATA, MODEL = "data", "model"


def maybe_initialize_distributed(mesh_cfg) -> bool:
  """jax.distributed.initialize() when the config or the environment asks for it.

  The environment asks with JAX_COORDINATOR_ADDRESS (plus a cluster JAX detects, or
  mesh.num_processes / mesh.process_id) or SK_JAX_DISTRIBUTED=1. Must run before
  anything touches the devices. Returns whether it initialised.
  """
  wanted = (
    bool(mesh_cfg.get("distributed"))
    or os.environ.get("SK_JAX_DISTRIBUTED") == "1"
    or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
  )
  if not wanted or jax.distributed.is_initialized():
    return False
  kwargs = {
    k: mesh_cfg.get(k)
    for k in ("coordinator_address", "num_processes", "process_id")
    if mesh_cfg.get(k) is not None
  }
  if mesh_cfg.get("heartbeat_timeout_s") is not None:
    # How long the coordination service waits for a silent (killed) process before it stops
    # every other one with an error: the bound on a hang when a peer dies.
    kwargs["heartbeat_timeout_seconds"] = int(mesh_cfg.heartbeat_timeout_s)
  # CPU devices of several processes talk through gloo (multi-process CPU runs, tests);
  # the setting does not touch GPU or TPU backends. Asking for the backend here
  # would initialise it too early.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """A ("data", "model") mesh; mesh.data = -1 takes every device left after the model axis."""
  devices = list(jax.devices() if devices is None else devices)
  model = int(mesh_cfg.model)
  if model < 1 or len(devices) % model:
    raise InputError(f"mesh.model={model} does not divide the {len(devices)} devices")
  data = int(mesh_cfg.data)
  if data == -1:
    data = len(devices) // model
  if data < 1 or data * model > len(devices):
    raise InputError(
      f"mesh.data={mesh_cfg.data} x mesh.model={model} needs {data * model} devices, "
      f"{len(devices)} available"
    )
  # Auto axes: parameter sharding along "model" needs the compiler to choose the
  # convolution output shardings (explicit axes would make us annotate every conv).
  return jax.make_mesh(
    (data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices[: data * model]
  )


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  """The batch must split evenly over the data axis and the processes; raised before compiling."""
  n = mesh.shape[DATA]
  if global_batch % n:
    raise InputError(
      f"data.batch_size={global_batch} does not divide by the {n} data-parallel devices "
      f"of the mesh; use a multiple of {n} or set mesh.data"
    )
  if global_batch % jax.process_count():
    raise InputError(
      f"data.batch_size={global_batch} does not divide by the {jax.process_count()} processes"
    )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split along "data", the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def param_sharding(mesh, shape) -> NamedSharding:
  """Replicated, or with mesh.model > 1 split along "model" on the largest dimension that divides."""
  n = mesh.shape[MODEL]
  if n > 1:
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if shape[axis] % n == 0:
        spec = [None] * len(shape)
        spec[axis] = MODEL
        return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(mesh, abstract_state):
  """The sharding of every leaf of an abstract train state (from jax.eval_shape)."""
  return jax.tree.map(lambda x: param_sharding(mesh, getattr(x, "shape", ())), abstract_state)


def global_batch(mesh, local_batch: dict) -> dict:
  """This process's share of the batch (numpy) -> global arrays sharded along "data"."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def compiled_for_all(jitted, *args):
  """`jitted`, or with several processes its executable for `args`, compiled ahead, after a
  barrier of the coordination service: a host that compiles faster (a cache hit) would
  otherwise wait for the others inside the first collective, whose setup has short deadlines
  (gloo's 30 s on CPU)."""
  if jax.process_count() == 1:
    return jitted
  import orbax.checkpoint as ocp

  compiled = jitted.lower(*args).compile()
  ocp.multihost.sync_global_processes(
    "sk-jax-step-compiled", timeout=3600, processes=set(range(jax.process_count()))
  )
  return compiled
