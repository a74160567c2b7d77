"""Test setup: 8 simulated CPU devices (for the sharded code) and a persistent compile cache."""

import os

# Both must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The oracle tests compare float32 JAX with float64 numpy at 1e-5-ish tolerances. Those hold on
# every backend only at full float32 matmul precision: the platform defaults are TF32 on NVIDIA
# GPUs and one bfloat16 pass on TPUs (about 1e-3 and 4e-3 relative), so the suite pins
# "highest" rather than loosening every tolerance to the coarsest backend. The library does
# not rely on this: the attention asks for "highest" itself (model.attention_precision), and
# tests/nn/test_chunked_attention.py checks it under a bfloat16 default.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vgg_params():
  import sk_jax

  return sk_jax.load_vgg16()


@pytest.fixture(scope="session")
def photo():
  """scikit-image's astronaut, (512, 512, 3) float32 in [0, 1]."""
  from skimage import data

  return data.astronaut().astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def texture():
  """scikit-image's brick texture as RGB, (512, 512, 3) float32 in [0, 1]."""
  from skimage import data

  return np.repeat(data.brick()[..., None], 3, axis=-1).astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def tiny_generator():
  """A small random-init generator, (params, ModelConfig), shared by the end-to-end tests."""
  import jax

  import sk_jax

  config = sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16)
  return sk_jax.init_params(config, jax.random.key(0)), config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_generator):
  """`tiny_generator` saved as a generator checkpoint directory; returns its path."""
  from sk_jax.io import artifacts

  return artifacts.save_generator(str(tmp_path_factory.mktemp("tiny") / "gen"), *tiny_generator)


@pytest.fixture
def damaged_bundle(tmp_path, monkeypatch):
  """The bundled generator copied to tmp with one byte of params.npz flipped, and made the
  package's bundled generator for the test; returns the copy's directory."""
  import shutil

  from sk_jax.inference import bundled

  copy = tmp_path / "damaged_bundle"
  shutil.copytree(bundled.DIRECTORY, copy)
  params = copy / "params.npz"
  data = bytearray(params.read_bytes())
  data[len(data) // 2] ^= 0x01
  params.write_bytes(bytes(data))
  monkeypatch.setattr(bundled, "DIRECTORY", str(copy))
  return copy


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
  """The repository's root directory (train.py, eval.py, configs/)."""
  return ROOT


def make_tiny_train_config(**overrides):
  """configs/default.py shrunk to a two-step CPU run (batch 2 of 48 x 48 crops, one device);
  `group__field=value` overrides. Tests that train share this one train-step program through
  the persistent compile cache, so override only what the tested property needs."""
  from sk_jax.config import load_config

  cfg = load_config(os.path.join(ROOT, "configs", "default.py"))
  cfg.model.gate_hidden, cfg.model.kernel_hidden = 16, 32
  cfg.disc.features, cfg.disc.num_layers = 8, 2
  cfg.data.update(resize=56, crop=48, batch_size=2, num_workers=0, num_threads=2)
  cfg.train.steps = 2
  cfg.ckpt.update(every=2, keep=2)
  cfg.log.update(every=1, image_every=2)
  cfg.mesh.data = 1
  for key, value in overrides.items():
    group, field = key.split("__")
    cfg[group][field] = value
  return cfg


@pytest.fixture(scope="session")
def tiny_train_config():
  """A factory: `make_tiny_train_config`."""
  return make_tiny_train_config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A workdir after 2 steps of `make_tiny_train_config()`: checkpoints 1 (Orbax's first save)
  and 2, metrics, a sample grid and the exported generator. Shared: copy it before training on."""
  from sk_jax.train import loop

  workdir = str(tmp_path_factory.mktemp("trained"))
  loop.train(make_tiny_train_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def random_batches():
  """A factory: n batches {"content", "style"} of random uint8 (batch, crop, crop, 3) images."""

  def make(n, batch=8, crop=48, seed=0):
    rng = np.random.default_rng(seed)
    return [
      {
        k: rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
        for k in ("content", "style")
      }
      for _ in range(n)
    ]

  return make


@pytest.fixture(scope="session")
def metric_steps():
  """workdir -> the steps logged in its metrics.jsonl, in order."""
  import json

  from sk_jax.train import logger

  def steps(workdir):
    with open(os.path.join(workdir, logger.METRICS_FILE)) as f:
      return [json.loads(line)["step"] for line in f]

  return steps


@pytest.fixture(scope="session")
def generator_with_config_json():
  """A factory: (path, params, model_config dict) -> a generator checkpoint of `params` whose
  model_config item holds that JSON (an older version's, or another model's), written with
  the public save_generator and the item's file then replaced; returns the path."""
  import json

  from sk_jax.io import artifacts
  from sk_jax.nn.generator import ModelConfig

  def write(path, params, config_json):
    path = artifacts.save_generator(str(path), params, ModelConfig())
    with open(os.path.join(path, "model_config", "metadata"), "w") as f:
      json.dump(config_json, f)
    return path

  return write
