"""The attention ablation of docs/method.md: full, topK and CGM readings, same seed, data and steps.

  python benchmarks/ablate_attention.py --out benchmarks/results/ablation_cpu64.json
      64 px, batch 4, 100 steps: 5-15 min per variant on 2 shared CPU cores; split the
      variants over processes with --variants, then --merge the JSONs
  python benchmarks/ablate_attention.py --quick --out /tmp/ablation_quick.json
      32 px, batch 2, 20 steps: 10.6 min wall (6.7 CPU-min) on 2 loaded cores
  python benchmarks/ablate_attention.py --out RESULT.json --plot-only     (redraw; print the table)

Every variant trains with the project's own train step (sk_jax.train.step.make_setup: all
losses and the discriminator) from configs/default.py, at a small size, on the
embedded scikit-image images minus a held-back set (HELD_PHOTOS x HELD_STYLES), on
which each trained generator is then evaluated. Writes the JSON described in
docs/method.md ("The attention ablation") and, next to it, three PNG plots
(<out>_loss.png, <out>_fig3.png, <out>_kept.png). --plot-only redraws them.

A topK variant with K >= Ns (the number of style positions) keeps every weight: it is
plain Eq. 2, so it is not trained again but reported as "saturated_by": "full".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HELD_PHOTOS = ("chelsea", "motorcycle_left")
HELD_STYLES = ("gravel", "immunohistochemistry")

# name -> (model overrides, opt overrides). "cgm_paper" is the reading as printed (and
# the pre-issue-8 default); the others are the candidate remedies of docs/method.md.
VARIANTS = {
  "full": ({"attention": "full"}, {}),
  **{
    f"topk{k}": ({"attention": "topk", "topk": k, "gate_renormalize": False}, {})
    for k in (1, 4, 16, 64, 256)
  },
  "cgm_paper": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 1.0,
    },
    {},
  ),
  "cgm_renorm": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": True,
      "gate_temperature": 1.0,
    },
    {},
  ),
  "cgm_softplus": (
    {
      "attention": "cgm",
      "gate_lambda": "softplus",
      "gate_renormalize": False,
      "gate_temperature": 1.0,
    },
    {},
  ),
  "cgm_softplus_renorm": (
    {
      "attention": "cgm",
      "gate_lambda": "softplus",
      "gate_renormalize": True,
      "gate_temperature": 1.0,
    },
    {},
  ),
  "cgm_tau0.25": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 0.25,
    },
    {},
  ),
  "cgm_tau4": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 4.0,
    },
    {},
  ),
  "cgm_ef_lr0.01": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 1.0,
    },
    {"gate_lr_scale": 0.01},
  ),
  # The restoring forces of docs/method.md ("The gate's equilibrium"), on the reading above.
  **{
    f"cgm_{force}{target}": (
      {
        "attention": "cgm",
        "gate_lambda": "linear",
        "gate_renormalize": False,
        "gate_temperature": 1.0,
        "gate_target": target,
        "gate_force": force,
      },
      {"gate_lr_scale": 0.01},
    )
    for force, targets in (("controller", (0.25, 0.5)), ("budget", (0.25,)))
    for target in targets
  },
  # The controller ten times faster: at 0.01 per step (1/Ns units) the first long run's offset
  # rose at its full rate every step while its kept fraction still climbed (docs/method.md).
  "cgm_controller0.25_rate0.1": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 1.0,
      "gate_target": 0.25,
      "gate_force": "controller",
    },
    {"gate_lr_scale": 0.01, "gate_offset_rate": 0.1},
  ),
  # The controller with E_f's outputs centred per image (model.gate_center): E_f only shapes
  # the threshold across positions, so its drift cannot move the level the offset holds.
  **{
    f"cgm_controller{target}_center": (
      {
        "attention": "cgm",
        "gate_lambda": "linear",
        "gate_renormalize": False,
        "gate_temperature": 1.0,
        "gate_target": target,
        "gate_force": "controller",
        "gate_center": True,
      },
      {"gate_lr_scale": 0.01, "gate_offset_rate": 0.03},
    )
    for target in (0.25, 0.5)
  },
  "cgm_linear_surrogate": (
    {
      "attention": "cgm",
      "gate_lambda": "linear",
      "gate_renormalize": False,
      "gate_temperature": 1.0,
      "gate_surrogate": "linear",
    },
    {"gate_lr_scale": 0.01},
  ),
  # The control: a fixed share of every row, no E_f (= topK with K = k* Ns at one Ns).
  **{
    f"quantile{q}": ({"attention": "quantile", "gate_target": q, "gate_renormalize": False}, {})
    for q in (0.25, 0.5)
  },
  "topk32": ({"attention": "topk", "topk": 32, "gate_renormalize": False}, {}),
  # The noise floor: "full" again with another seed.
  "full_seed1": ({"attention": "full"}, {}),
}
# The long runs of issue 17 (docs/method.md, "The gate's equilibrium"), in training order.
LONG = (
  "cgm_controller0.25_center",
  "cgm_budget0.25",
  "full",
  "full_seed1",
  "cgm_controller0.5_center",
  "quantile0.25",
  "cgm_ef_lr0.01",
  "cgm_controller0.25",
  "cgm_controller0.25_rate0.1",
  "cgm_controller0.5",
  "quantile0.5",
  "cgm_linear_surrogate",
)
# Seed offsets from --seed: full_seed1 is full on another seed (the noise floor).
SEEDS = {"full_seed1": 1}
WARMUP = 200  # steps before the band criterion applies
# Training order: the saturated topK last (they reuse "full"), the cheap-to-lose ones late.
ORDER = (
  "full",
  "cgm_paper",
  "cgm_renorm",
  "topk16",
  "topk4",
  "topk1",
  "cgm_softplus_renorm",
  "cgm_ef_lr0.01",
  "cgm_tau4",
  "cgm_softplus",
  "cgm_tau0.25",
  "topk64",
  "topk256",
  *(n for n in LONG if n not in ("full", "cgm_ef_lr0.01")),
  "topk32",
)
# The E_f step-size factor is pinned too, so that every variant except cgm_ef_lr0.01 is the
# plain recipe whatever configs/default.py chooses.
for _m, _o in VARIANTS.values():
  _o.setdefault("gate_lr_scale", 1.0)
  # The gate's force likewise: a variant that names none has none (the paper's reading).
  _m.setdefault("gate_target", None)
  _m.setdefault("gate_center", False)
  _m.setdefault("gate_force", "controller")
  _m.setdefault("gate_surrogate", "sigmoid")
  _o.setdefault("gate_offset_rate", 0.01)
MODEL_KEYS = (
  "attention",
  "topk",
  "gate_lambda",
  "gate_renormalize",
  "gate_temperature",
  "gate_target",
  "gate_force",
  "gate_surrogate",
  "gate_center",
)


def base_config(size: int, batch: int, steps: int, seed: int, content_dir: str, style_dir: str):
  from sk_jax.config import load_config

  cfg = load_config(os.path.join(ROOT, "configs", "default.py"))
  cfg.seed = seed
  cfg.data.content, cfg.data.style = content_dir, style_dir
  cfg.data.resize, cfg.data.crop = int(size * 1.5), size
  cfg.data.batch_size, cfg.data.num_workers, cfg.data.num_threads = batch, 0, 2
  # a narrower PatchGAN, as configs/quick.py: the full one dominates a CPU step
  cfg.disc.features = 16
  cfg.train.steps = steps
  cfg.mesh.data = 1
  return cfg


def default_variant_name() -> str:
  """The variant whose settings configs/default.py uses."""
  from sk_jax.config import load_config

  cfg = load_config(os.path.join(ROOT, "configs", "default.py"))
  model, opt = cfg.model.to_dict(), cfg.opt.to_dict()
  for name, (m, o) in VARIANTS.items():
    want = {**{k: model[k] for k in MODEL_KEYS}, "gate_lr_scale": opt.get("gate_lr_scale", 1.0)}
    got = {**{k: model[k] for k in MODEL_KEYS}, **m, "gate_lr_scale": o["gate_lr_scale"]}
    if m["attention"] != "topk":
      got["topk"] = want["topk"]
    if m["attention"] == "full":
      got.update(
        {
          k: want[k]
          for k in ("gate_lambda", "gate_renormalize", "gate_temperature", "gate_lr_scale")
        }
      )
    if got == want:
      return name
  return "(none of the variants)"


def write_split(tmp: str):
  """The embedded images as two training folders, without the held-back ones."""
  from sk_jax.io import images

  dirs = {}
  for which, held in (("photos", HELD_PHOTOS), ("styles", HELD_STYLES)):
    d = os.path.join(tmp, which)
    os.makedirs(d, exist_ok=True)
    for name in images.PACKAGED_SETS[which]:
      if name not in held:
        images.save_image(images.packaged_image(name), os.path.join(d, f"{name}.png"))
    dirs[which] = d
  return dirs["photos"], dirs["styles"]


def _center_crop(img, size: int):
  """The central size x size crop after resizing the short side to 1.5 size (as training's crops)."""
  from sk_jax.io import images

  img = images.resize_short_side(img, int(size * 1.5))
  h, w = img.shape[:2]
  y, x = (h - size) // 2, (w - size) // 2
  return img[y : y + size, x : x + size]


def corpus_pairs(eval_dir: str, size: int, limit: int | None = None):
  """Every photo of EVAL_DIR/content with every painting of EVAL_DIR/style (the first `limit` of
  each by name), central crops: (content (P, size, size, 3), style (P, ...), the counts)."""
  import numpy as np

  from sk_jax.io import images

  load = lambda d: [
    _center_crop(images.load_image(p), size)
    for p in images.list_images(os.path.join(eval_dir, d))[:limit]
  ]
  photos, paintings = load("content"), load("style")
  content = np.stack([c for c in photos for _ in paintings])
  style = np.stack([s for _ in photos for s in paintings])
  return content, style, len(photos), len(paintings)


def evaluate_corpus(path: str, eval_dir: str, limit: int | None = None, batch: int = 100):
  """Adds each variant's losses on EVAL_DIR's pairs (`corpus` in its record: the means and their
  standard errors over pairs) to the JSON at `path`; variants whose workdir is gone are skipped.
  A centred CGM (model.gate_center) is scored a second time with E_f switched off (its output
  layer's weights zeroed: lambda 1 and beta 0 at every position, the offset kept), as
  `corpus_ef_off`: what E_f's per-position threshold adds to the trained generator."""
  import jax
  import numpy as np

  from sk_jax.io import artifacts, weights
  from sk_jax.train import loop as train

  with open(path) as f:
    res = json.load(f)
  content, style, n_photos, n_paintings = corpus_pairs(eval_dir, res["size"], limit)
  vgg_params = weights.load_vgg16()

  def score(run, params):
    per_pair = {k: [] for k in ("content", "style", "kept_fraction", "kept_std")}
    for i in range(0, len(content), batch):  # equal batches: one program
      for k, x in run(params, content[i : i + batch], style[i : i + batch]).items():
        per_pair[k].append(np.asarray(x))
    per_pair = {k: np.concatenate(x) for k, x in per_pair.items()}
    sem = lambda x: float(x.std() / np.sqrt(len(x)))
    return {
      "dir": eval_dir,
      "photos": n_photos,
      "paintings": n_paintings,
      **{f"{k}_loss": float(per_pair[k].mean()) for k in ("content", "style")},
      **{f"{k}_loss_sem": sem(per_pair[k]) for k in ("content", "style")},
      "kept_fraction": float(per_pair["kept_fraction"].mean()),
      "kept_std": float(per_pair["kept_std"].mean()),
    }

  key = (eval_dir, n_photos, n_paintings)
  for name, v in res["variants"].items():
    export = os.path.join(v.get("workdir", ""), train.EXPORT_DIR)
    scored = v.get("corpus")
    if scored and (scored["dir"], scored["photos"], scored["paintings"]) == key:
      continue  # scored already (a merge of scored runs)
    if "saturated_by" in v or not os.path.isdir(export):
      continue  # not trained here, or its workdir is gone
    params, model = artifacts.load_generator(export)
    run = evaluator(vgg_params, model)
    v["corpus"] = score(run, params)
    print(f"{name}: corpus {v['corpus']}", flush=True)
    if model.attention == "cgm" and model.gate_center:
      off = jax.tree.map(lambda x: x, params)
      gate = off["alignment"]["gate"]
      off["alignment"]["gate"] = {
        **gate,
        "conv2": {**gate["conv2"], "kernel": np.zeros_like(gate["conv2"]["kernel"])},
      }
      v["corpus_ef_off"] = score(run, off)
      print(f"{name}, E_f off: corpus {v['corpus_ef_off']}", flush=True)
  write_json(res, path)


def held_out_pairs(size: int):
  """(content, style) (P, size, size, 3) float32 in [0, 1]: every held photo with every held style."""
  import numpy as np

  from sk_jax.io import images

  def load(name):
    img = images.resize_short_side(images.packaged_image(name), int(size * 1.5))
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y : y + size, x : x + size]

  cs = [(load(c), load(s)) for c in HELD_PHOTOS for s in HELD_STYLES]
  return np.stack([c for c, _ in cs]), np.stack([s for _, s in cs])


def evaluator(vgg_params, model):
  """A jitted (params, content, style) -> per-pair content loss, style loss (sk_jax.nn.losses, as
  in training), kept fraction and its spread over positions, of the stylized pairs."""
  import jax

  from sk_jax.nn import losses, vgg
  from sk_jax.nn.generator import stylize_images

  @jax.jit
  def run(params, content, style):
    out, aux = stylize_images(params, vgg_params, model, content, style)
    f = vgg.vgg16_features(vgg_params, jax.numpy.concatenate([out, content, style]), vgg.TAPS)
    f_cs, f_c, f_s = (
      {k: v[i * len(out) : (i + 1) * len(out)] for k, v in f.items()} for i in range(3)
    )
    return {
      "content": losses.content_loss(f_cs, f_c),
      "style": losses.style_loss(f_cs, f_s),
      "kept_fraction": aux["kept_fraction"],
      "kept_std": aux["kept_std"],
    }

  return run


def evaluate(params, vgg_params, model, content, style):
  """The means over the held-back pairs of `evaluator`'s losses and gate statistics."""
  import numpy as np

  ev = {
    k: float(np.mean(v)) for k, v in evaluator(vgg_params, model)(params, content, style).items()
  }
  return {**ev, "total": ev["content"] + ev["style"]}


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl (one per logged step)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def holding(steps, kept, target, warmup: int = WARMUP) -> dict:
  """docs/method.md's criteria: share of logged steps after `warmup` within target +- 0.1, and
  the least-squares trend of the kept fraction over the second half, per 1000 steps."""
  import numpy as np

  steps, kept = np.asarray(steps, float), np.asarray(kept, float)
  after = steps > warmup
  out = {"warmup": warmup}
  if target is not None and after.any():
    out["in_band_share"] = float(np.mean(np.abs(kept[after] - target) <= 0.1))
  half = steps > steps[-1] / 2
  if half.sum() >= 2:
    out["trend_per_1000"] = float(np.polyfit(steps[half], kept[half], 1)[0] * 1000)
  return out


def train_variant(name, cfg, vgg_params, held, workdir: str, log=print):
  """Trains one variant as a train.py run in `workdir` (a killed run resumes from its last
  checkpoint: run the same command again); returns its record (curves every step)."""
  import numpy as np

  from sk_jax.io import artifacts
  from sk_jax.train import loop as train

  cfg.log.every, cfg.log.image_every = 1, 0
  # Often: on 2 shared CPU cores a 64 px step takes 3-60 s, and a killed run resumes from here.
  cfg.ckpt.every, cfg.ckpt.keep = max(1, min(25, int(cfg.train.steps) // 4)), 2
  t0 = time.perf_counter()
  train.train(cfg, workdir)
  rows = [r for r in read_metrics(workdir) if "loss/total" in r]
  steps = int(cfg.train.steps)
  ns = (cfg.data.crop // 8) ** 2
  tail = rows[-max(1, steps // 10) :]
  mean = lambda k: float(np.mean([r[k] for r in tail]))
  params, model = artifacts.load_generator(os.path.join(workdir, train.EXPORT_DIR))
  rate = [r["throughput/steps_per_s"] for r in rows if r.get("throughput/steps_per_s")]
  record = {
    "attention": model.attention,
    "topk": model.topk if model.attention == "topk" else None,
    "model": {k: getattr(model, k) for k in MODEL_KEYS},
    "gate_lr_scale": float(cfg.opt.gate_lr_scale),
    "seed": int(cfg.seed),
    "workdir": workdir,
    "kept_fraction_final": mean("gate/kept_fraction"),
    "kept_fraction_curve": [[r["step"], r["gate/kept_fraction"]] for r in rows],
    "kept_std_final": mean("gate/kept_std") if "gate/kept_std" in tail[-1] else None,
    "kept_nodes_final": mean("gate/kept_fraction") * ns,
    "content_loss": mean("loss/content"),
    "style_loss": mean("loss/style"),
    "total_loss": mean("loss/total"),
    # Seconds of training (steps / median logged rate), not of this call (it may resume).
    "seconds": steps / float(np.median(rate)) if rate else time.perf_counter() - t0,
    "curves": {k: [r.get(k) for r in rows] for k in rows[-1] if k.startswith(("loss/", "gate/"))},
  }
  target = model.gate_target if model.attention == "cgm" else None
  record["holding"] = holding(
    [r["step"] for r in rows], [r["gate/kept_fraction"] for r in rows], target
  )
  ev = evaluate(params, vgg_params, model, *held)
  record.update(
    {f"heldout_{k}_loss": ev[k] for k in ("content", "style", "total")},
    heldout_kept_fraction=ev["kept_fraction"],
    heldout_kept_std=ev["kept_std"],
  )
  return record


def run(args):
  import jax

  from sk_jax.io import weights

  size = args.size or (32 if args.quick else 64)
  steps = args.steps or (20 if args.quick else 100)
  batch = args.batch or (2 if args.quick else 4)
  names = (
    list(LONG)
    if args.variants == "long"
    else args.variants.split(",")
    if args.variants
    else list(ORDER)
  )
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
  ns = (size // 8) ** 2
  out = {
    "default": default_variant_name(),
    "steps": steps,
    "size": size,
    "batch": batch,
    "seed": args.seed,
    "style_positions": ns,
    "held_out": {"photos": HELD_PHOTOS, "styles": HELD_STYLES},
    "device": str(jax.devices()[0].device_kind),
    "command": " ".join(["python"] + sys.argv),
    "variants": {},
  }
  if args.resume and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    if (old["steps"], old["size"], old.get("batch"), old.get("seed")) == (
      steps,
      size,
      batch,
      args.seed,
    ):
      out["variants"] = old["variants"]
  vgg_params = weights.load_vgg16()
  held = held_out_pairs(size)
  root = os.path.abspath(args.workdirs or tempfile.mkdtemp(prefix="sk-ablation-"))
  content_dir, style_dir = write_split(os.path.join(root, "data"))
  for name in names:
    if name in out["variants"]:
      continue
    m, o = VARIANTS[name]
    if add_saturated(out, name):
      print(f"{name}: K >= Ns = {ns}, identical to full", flush=True)
      continue
    cfg = base_config(size, batch, steps, args.seed + SEEDS.get(name, 0), content_dir, style_dir)
    cfg.model.update(m)
    cfg.opt.update(o)
    print(f"{name}: training {steps} steps at {size} px, batch {batch}", flush=True)
    workdir = os.path.join(root, f"{name}_{size}px_b{batch}_s{args.seed}")
    rec = train_variant(name, cfg, vgg_params, held, workdir, log=lambda s: print(s, flush=True))
    out["variants"][name] = rec
    print(
      f"{name}: kept {rec['kept_fraction_final']:.3f} content {rec['content_loss']:.3f} "
      f"style {rec['style_loss']:.3f} total {rec['total_loss']:.3f} held-out content "
      f"{rec['heldout_content_loss']:.3f} style {rec['heldout_style_loss']:.3f} ({rec['seconds']:.0f} s)",
      flush=True,
    )
    write_json(out, args.out)
  write_json(out, args.out)
  plot(args.out)


def write_json(out, path):
  # configs/default.py may have changed since the run started
  out["default"] = default_variant_name()
  for v in out["variants"].values():  # Fig. 3's unit: kept style positions per query
    v["kept_nodes_curve"] = [[s, f * out["style_positions"]] for s, f in v["kept_fraction_curve"]]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, path)


def plot(path):
  """Writes <stem>_loss.png, <stem>_fig3.png and <stem>_kept.png next to the JSON."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import pngplot

  with open(path) as f:
    res = json.load(f)
  stem = os.path.splitext(path)[0]
  ns = res["style_positions"]
  trained = {n: v for n, v in res["variants"].items() if "saturated_by" not in v}
  title = f"{res['size']} px, batch {res['batch']}, {res['steps']} steps, Ns = {ns}"

  def smooth(ys, w):
    out, acc = [], []
    for y in ys:
      acc.append(y)
      acc = acc[-w:]
      out.append(sum(acc) / len(acc))
    return out

  w = max(1, res["steps"] // 20)
  panels = []
  for key, label in (
    ("loss/content", "content loss"),
    ("loss/style", "style loss"),
    ("loss/total", "total loss"),
  ):
    series = {
      n: (list(range(1, len(v["curves"][key]) + 1)), smooth(v["curves"][key], w))
      for n, v in trained.items()
    }
    panels.append((label + f" (running mean of {w})", series))
  pngplot.line_panels(stem + "_loss.png", panels, xlabel="step", title=title, log_y=True)

  kept = {
    n: ([s for s, _ in v["kept_fraction_curve"]], [f * ns for _, f in v["kept_fraction_curve"]])
    for n, v in trained.items()
    if v["attention"] == "cgm"
  }
  targets = sorted(
    {v.get("model", {}).get("gate_target") for n, v in trained.items() if n in kept} - {None}
  )
  if kept and targets:  # the long runs: the bands k* +- 0.1 of issue 17's criterion
    pngplot.line_panels(
      stem + "_kept.png",
      [(f"kept nodes per query (kept fraction x Ns); lines: k* +- 0.1 for k* in {targets}", kept)],
      xlabel="step",
      title=title + f"; full = {ns}",
      hlines=[ns * (t + d) for t in targets for d in (-0.1, 0.1)],
    )
  elif kept:
    pngplot.line_panels(
      stem + "_kept.png",
      [("kept nodes per query (kept fraction x Ns); lines: 2 % and 60 %", kept)],
      xlabel="step",
      title=title + f"; full = {ns}",
      hlines=[ns * 0.02, ns * 0.6],
    )

  # The held-out corpus pairs where the variants were scored on them (--eval-dir), else the
  # four held-back pairs.
  scored = {n: v for n, v in res["variants"].items() if "corpus" in v}
  variants, where = (scored, "corpus") if scored else (res["variants"], "held-out")
  pts = {"content": [], "style": []}
  for n, v in variants.items():
    nodes = v["kept_nodes_final"] if v["attention"] != "topk" else min(v["topk"], ns)
    # at one style resolution the fixed quantile is topK with K = k* Ns (the same program)
    kind = "topk" if v["attention"] in ("topk", "quantile") else v["attention"]
    for loss in pts:
      y = v["corpus"][f"{loss}_loss"] if scored else v[f"heldout_{loss}_loss"]
      pts[loss].append((n, kind, max(nodes, 1e-3), y))
  pngplot.scatter_panels(
    stem + "_fig3.png",
    [(f"{where} {k} loss vs selected nodes", p) for k, p in pts.items()],
    xlabel="selected nodes per query (log)",
    title=title + " (Fig. 3 right)",
  )


def add_saturated(out, name) -> bool:
  """Records topK with K >= Ns as a copy of "full" (it is Eq. 2); False if it is not such a case."""
  m, _ = VARIANTS[name]
  if not (
    m["attention"] == "topk" and m["topk"] >= out["style_positions"] and "full" in out["variants"]
  ):
    return False
  rec = copy.deepcopy(out["variants"]["full"])
  rec.update(
    attention="topk", topk=m["topk"], saturated_by="full", seconds=0.0, model={**rec["model"], **m}
  )
  out["variants"][name] = rec
  return True


def merge(paths, out_path):
  """Unions the variants of several result files of identical settings, in ORDER."""
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  keys = ("size", "batch", "seed")
  for r, path in zip(runs[1:], paths[1:]):
    if tuple(r.get(k) for k in keys) != tuple(runs[0].get(k) for k in keys):
      raise SystemExit(f"{path}: other settings than {paths[0]} ({', '.join(keys)})")
  out = dict(runs[0])
  # Runs of different lengths may be merged (a long run stopped early): each variant keeps its own.
  found = {
    n: {**v, "steps": v.get("steps", r["steps"])} for r in runs for n, v in r["variants"].items()
  }
  out["steps"] = max(r["steps"] for r in runs)
  out["variants"] = {}
  for n in ORDER:
    if n in found:
      out["variants"][n] = found[n]
    else:
      add_saturated(out, n)
  out["command"] = [r["command"] for r in runs]
  write_json(out, out_path)


def table(path) -> str:
  """The JSON as the markdown table of docs/method.md."""
  with open(path) as f:
    res = json.load(f)
  ns, full = res["style_positions"], res["variants"].get("full")
  lines = [
    "| variant | attention | kept fraction (last 10 %) | kept nodes / query | content | style | total "
    "| held-out content | held-out style | vs full (held-out c / s) | s |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, v in res["variants"].items():
    att = v["attention"] + (f" K={v['topk']}" if v["attention"] == "topk" else "")
    if "saturated_by" in v:
      att += f" (K >= Ns: = {v['saturated_by']})"
    rel = ""
    if full:
      rel = (
        f"{v['heldout_content_loss'] / full['heldout_content_loss'] - 1:+.1%} / "
        f"{v['heldout_style_loss'] / full['heldout_style_loss'] - 1:+.1%}"
      )
    lines.append(
      f"| {name}{' (default)' if name == res.get('default') else ''} | {att} | "
      f"{v['kept_fraction_final']:.3f} | {v['kept_fraction_final'] * ns:.1f} | {v['content_loss']:.3f} | "
      f"{v['style_loss']:.2f} | {v['total_loss']:.2f} | {v['heldout_content_loss']:.3f} | "
      f"{v['heldout_style_loss']:.2f} | {rel} | {v['seconds']:.0f} |"
    )
  return "\n".join(lines)


def long_table(path) -> str:
  """The long runs against issue 17's criteria: the share of logged steps after the warm-up
  within k* +- 0.1, the second half's trend, the spread over content positions, the losses."""
  import numpy as np

  with open(path) as f:
    res = json.load(f)
  full = res["variants"].get("full")
  lines = [
    "| variant | k* | steps | kept (last 10 %) | in k* +- 0.1 after step 200 | trend, 2nd half (per 1000) "
    "| `gate/kept_std` mean (min) after 200 | held-out content | held-out style | vs full (c / s) "
    "| corpus content | corpus style | vs full (c / s) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  rel = lambda a, b: f"{a / b - 1:+.1%}"
  for name, v in res["variants"].items():
    if "saturated_by" in v:
      continue
    target = v.get("model", {}).get("gate_target")
    hold = v.get("holding", {})
    band = f"{hold['in_band_share']:.0%}" if "in_band_share" in hold else ""
    trend = f"{hold['trend_per_1000']:+.3f}" if "trend_per_1000" in hold else ""
    spread = ""
    if v["attention"] == "cgm" and v["curves"].get("gate/kept_std"):
      steps = [s for s, _ in v["kept_fraction_curve"]]
      after = [x for s, x in zip(steps, v["curves"]["gate/kept_std"]) if s > WARMUP]
      if after:
        spread = f"{np.mean(after):.3f} ({np.min(after):.3f})"
    vs_full = ""
    if full:
      vs_full = (
        f"{rel(v['heldout_content_loss'], full['heldout_content_loss'])} / "
        f"{rel(v['heldout_style_loss'], full['heldout_style_loss'])}"
      )
    corpus = " | | "
    if "corpus" in v:
      cp = v["corpus"]
      corpus = (
        f"{cp['content_loss']:.3f} +- {cp['content_loss_sem']:.3f} | "
        f"{cp['style_loss']:.2f} +- {cp['style_loss_sem']:.2f} | "
      )
      if full and "corpus" in full:
        fc = full["corpus"]
        corpus += (
          f"{rel(cp['content_loss'], fc['content_loss'])} / "
          f"{rel(cp['style_loss'], fc['style_loss'])}"
        )
    lines.append(
      f"| {name}{' (default)' if name == res.get('default') else ''} | "
      f"{'' if target is None else target} | {v.get('steps', res['steps'])} | "
      f"{v['kept_fraction_final']:.3f} | {band} | {trend} | {spread} | "
      f"{v['heldout_content_loss']:.3f} | {v['heldout_style_loss']:.2f} | {vs_full} | {corpus} |"
    )
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="JSON to write (plots go next to it)")
  p.add_argument(
    "--quick", action="store_true", help="32 px, batch 2, 20 steps: under 10 minutes on 2 cores"
  )
  p.add_argument("--steps", type=int, help="steps per variant (default 100; quick 20)")
  p.add_argument("--size", type=int, help="crop size, a multiple of 8 (default 64; quick 32)")
  p.add_argument("--batch", type=int, help="batch size (default 4; quick 2)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--variants",
    help=f"comma-separated subset of {','.join(VARIANTS)}; 'long': the long runs {','.join(LONG)}",
  )
  p.add_argument(
    "--workdirs",
    help="folder of the variants' train.py workdirs (default: a new temporary folder); "
    "rerunning with the same folder resumes each variant from its last checkpoint",
  )
  p.add_argument(
    "--resume", action="store_true", help="keep the variants already in --out (same settings)"
  )
  p.add_argument(
    "--plot-only", action="store_true", help="only redraw the plots of --out and print its table"
  )
  p.add_argument(
    "--eval-dir",
    metavar="DIR",
    help="with --plot-only or --merge: also score every variant whose workdir is still there on "
    "every DIR/content photo with every DIR/style painting (e.g. ../shared/corpus/eval)",
  )
  p.add_argument(
    "--eval-limit",
    type=int,
    default=20,
    metavar="N",
    help="--eval-dir's first N photos and N paintings by name (default 20: 400 pairs)",
  )
  p.add_argument(
    "--merge",
    nargs="+",
    metavar="JSON",
    help="combine the variants of runs with the same settings (e.g. run in parallel with --variants) into --out",
  )
  args = p.parse_args(argv)
  if args.merge:
    merge(args.merge, args.out)
    args.plot_only = True
  if args.plot_only:
    with open(args.out) as f:
      write_json(json.load(f), args.out)
    if args.eval_dir:
      evaluate_corpus(args.out, args.eval_dir, args.eval_limit)
    plot(args.out)
    print(table(args.out))
    with open(args.out) as f:
      if any("holding" in v for v in json.load(f)["variants"].values()):
        print(long_table(args.out))
  else:
    run(args)


if __name__ == "__main__":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
  main()
