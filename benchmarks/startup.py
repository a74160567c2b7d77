"""Where a `sk-jax stylize` call spends its time, cold and warm, against a warm `Stylizer`.

  python benchmarks/startup.py --out benchmarks/results/startup_cpu.json

One 512 px pair, as files: scikit-image's coffee (400 x 600 JPEG, 512 x 768 after --size 512)
and astronaut (512 x 512 PNG) written to a temporary directory; the bundled generator. Three measurements, in one run:
- `cli`: `sk-jax stylize` as subprocesses (`python -m sk_jax.cli`), wall time and CPU-seconds
  (`resource.getrusage(RUSAGE_CHILDREN)`): once with an empty compilation cache ("cold"), once
  with `--compile-cache off` (every run compiles, as before the cache), then --repeats runs
  with the cache the first one filled ("warm cache"), interleaved with
- `stylizer`: the same stylization (read, stylize, write the PNG) in this process's warm
  `Stylizer`, wall and CPU-seconds (`time.process_time`), its style cache emptied before each
  call so that it computes what the CLI computes (and once more with the style reused);
- `phases`: a child process that walks the cold path stage by stage (imports, weight loading,
  reading the inputs, tracing, compiling, the computation, writing), with an empty and with
  the warm cache.
CPU-seconds decide the goal (second and later CLI runs <= 1.25x the warm Stylizer), so that
other load on the machine does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 512
# Set by main: the two input files.
CONTENT = STYLE = ""


def _env(cache: str) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["SK_JAX_CACHE_DIR"] = cache
  return env


def _child_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def run_cli(out: str, cache: str) -> dict:
  """One `sk-jax stylize` subprocess: wall time and CPU-seconds."""
  cmd = [sys.executable, "-m", "sk_jax.cli", "stylize", "--content", CONTENT, "--style", STYLE]
  cmd += ["--size", str(SIZE), "--output", out, "--compile-cache", cache]
  cpu, t = _child_cpu(), time.perf_counter()
  subprocess.run(cmd, env=_env(cache), check=True, capture_output=True)
  return {"wall_s": time.perf_counter() - t, "cpu_s": _child_cpu() - cpu}


def _phases(out: str, content: str, style: str) -> dict:
  """The cold path stage by stage, in this (fresh) process; wall and CPU-seconds per stage."""
  marks = [("start", time.perf_counter(), time.process_time())]
  mark = lambda name: marks.append((name, time.perf_counter(), time.process_time()))
  import jax
  import numpy as np

  from sk_jax.cli import stylize  # noqa: F401 (what the command imports)
  from sk_jax.inference.buckets import to_bucket
  from sk_jax.inference.stylizer import Stylizer, _apply, _device, _encode
  from sk_jax.io import images

  mark("imports")
  st = Stylizer.load()
  mark("weights")
  c, s = images.prepare(content, SIZE), images.prepare(style, SIZE)
  (cb, chw), (sb, shw) = to_bucket(c), to_bucket(s)
  cb, chw, sb, shw = _device(cb), _device(chw, np.int32), _device(sb), _device(shw, np.int32)
  mark("read inputs")
  # What Stylizer.stylize runs, step by step: its kept programs (sk_jax.inference.programs)
  # are read back, or traced and exported when there are none; lowered; compiled (XLA's cache).
  enc_args, enc_kw = (st.vgg_params, sb), {"hw": shw}
  enc = st._programs.get(_encode, {"config": st.config}, *enc_args, **enc_kw)
  z = jax.ShapeDtypeStruct((1, sb.shape[1] // 8, sb.shape[2] // 8, 512), np.float32)
  statics = {"config": st.config, "query_chunk": st._chunk_for_features(cb, z)}
  kw = dict(z_styles=z, alpha=_device(1.0), style_hw=shw, content=cb, content_hw=chw)
  app = st._programs.get(_apply, statics, st.params, st.vgg_params, **kw)
  enc, app = enc.lower(*enc_args, **enc_kw), app.lower(st.params, st.vgg_params, **kw)
  mark("tracing")
  enc, app = enc.compile(), app.compile()
  mark("compiling")
  kw["z_styles"] = enc(*enc_args, **enc_kw)
  image, _ = app(st.params, st.vgg_params, **kw)
  image = np.asarray(jax.block_until_ready(image))[0, : c.shape[0], : c.shape[1]]
  mark("computation")
  images.save_image(image, out)
  mark("writing")
  return {
    name: {"wall_s": t - marks[i][1], "cpu_s": p - marks[i][2]}
    for i, (name, t, p) in enumerate(marks[1:])
  }


def run_phases(out: str, cache: str) -> dict:
  # Nothing of sk_jax or jax is imported before _phases starts its clock; Stylizer.load turns
  # the cache on from SK_JAX_CACHE_DIR.
  code = f"import json, sys; sys.path.insert(0, {ROOT!r}); from benchmarks.startup import _phases; "
  code += f"print(json.dumps(_phases({out!r}, {CONTENT!r}, {STYLE!r})))"
  r = subprocess.run([sys.executable, "-c", code], env=_env(cache), check=True, capture_output=True)
  return json.loads(r.stdout.decode().splitlines()[-1])


def new_sizes(st, stylizer_cls) -> dict:
  """A warm Stylizer meets content sizes it has not seen (crops of the content, one bucket):
  seconds and compiled programs added per new size, with buckets and with --no-buckets."""
  import numpy as np

  from sk_jax.inference.stylizer import _apply, _forward
  from sk_jax.io import images

  c, s = images.prepare(CONTENT, SIZE), images.prepare(STYLE, SIZE)
  out = {}
  for name, stylizer in (
    ("buckets", st),
    (
      "no_buckets",
      stylizer_cls(st.params, st.config, st.vgg_params, compile_cache="off", buckets=False),
    ),
  ):
    runs = []
    for width in (c.shape[1] - 24, c.shape[1] - 40):
      programs = _apply._cache_size() + _forward._cache_size()
      cpu, t = time.process_time(), time.perf_counter()
      np.asarray(stylizer.stylize(c[:, :width], s, size=None))
      runs.append(
        {
          "content_hw": [c.shape[0], width],
          "wall_s": time.perf_counter() - t,
          "cpu_s": time.process_time() - cpu,
          "new_programs": _apply._cache_size() + _forward._cache_size() - programs,
        }
      )
    out[name] = runs
  return out


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/startup.json")
  args = parser.parse_args()

  import jax

  from sk_jax.inference.stylizer import Stylizer
  from sk_jax.io import images

  global CONTENT, STYLE
  from PIL import Image
  from skimage import data

  work = tempfile.mkdtemp(prefix="sk-jax-startup-")
  cache, png = os.path.join(work, "xla"), os.path.join(work, "out.png")
  CONTENT, STYLE = os.path.join(work, "coffee.jpg"), os.path.join(work, "astronaut.png")
  Image.fromarray(data.coffee()).save(CONTENT, quality=95)
  Image.fromarray(data.astronaut()).save(STYLE)
  load_at_start = os.getloadavg()
  try:
    report = {"cli_cold": run_cli(png, cache), "cli_no_cache": run_cli(png, "off")}
    report["phases_cold"] = run_phases(png, os.path.join(work, "xla-phases"))
    report["phases_warm_cache"] = run_phases(png, os.path.join(work, "xla-phases"))
    # The warm Stylizer lives in this process, with the cache off: its programs stay in memory.
    st = Stylizer.load(compile_cache="off")

    def warm(reuse_style: bool) -> dict:
      if not reuse_style:
        st._styles.clear()
      cpu, t = time.process_time(), time.perf_counter()
      images.save_image(st.stylize(CONTENT, STYLE, size=SIZE), png)
      return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu}

    warm(False)
    cli, stylizer = [], []
    for _ in range(args.repeats):
      cli.append(run_cli(png, cache))
      stylizer.append(warm(False))
    reused = [warm(True) for _ in range(args.repeats)]
    report["new_size_in_bucket"] = new_sizes(st, Stylizer)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  med = lambda runs, k: statistics.median(r[k] for r in runs)
  for name, runs in (
    ("cli_warm_cache", cli),
    ("stylizer", stylizer),
    ("stylizer_style_reused", reused),
  ):
    report[name] = {
      "runs": runs,
      "median_wall_s": med(runs, "wall_s"),
      "median_cpu_s": med(runs, "cpu_s"),
    }
  report["cpu_ratio_cli_warm_cache_vs_stylizer"] = (
    report["cli_warm_cache"]["median_cpu_s"] / report["stylizer"]["median_cpu_s"]
  )
  report.update(
    benchmark="startup",
    pair=f"skimage coffee.jpg with astronaut.png at --size {SIZE}, bundled generator",
    platform=jax.default_backend(),
    device=str(jax.devices()[0].device_kind),
    machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
    load_average_at_start=load_at_start,
    load_average_at_end=os.getloadavg(),
    jax=jax.__version__,
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  for k in ("cli_cold", "cli_no_cache"):
    print(f"{k}: {report[k]['wall_s']:.2f} s wall, {report[k]['cpu_s']:.2f} CPU-s")
  for k in ("cli_warm_cache", "stylizer", "stylizer_style_reused"):
    print(f"{k}: {report[k]['median_wall_s']:.2f} s wall, {report[k]['median_cpu_s']:.2f} CPU-s")
  for k in ("phases_cold", "phases_warm_cache"):
    print(k, ", ".join(f"{n} {v['wall_s']:.2f}/{v['cpu_s']:.2f}" for n, v in report[k].items()))
  for name, runs in report["new_size_in_bucket"].items():
    sizes = [f"{r['content_hw']} {r['cpu_s']:.2f} CPU-s, {r['new_programs']} new" for r in runs]
    print(f"new content sizes, {name}: " + "; ".join(sizes))
  print(
    f"CLI (warm cache) / Stylizer CPU-seconds: {report['cpu_ratio_cli_warm_cache_vs_stylizer']:.2f}"
  )
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
