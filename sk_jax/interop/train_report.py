"""The table and the plot of `sk-jax parity --train` (sk_jax.interop.train_parity's result)."""

from __future__ import annotations

import math

from sk_jax.interop import pngplot


def format_train_report(result: dict) -> str:
  lines = [
    f"{'quantity':<28}{'jax':>13}{'torch':>13}{'rel err':>11}{'tolerance':>11}  result",
    "-" * 84,
  ]
  for r in result["rows"]:
    nums = (
      f"{r['jax']:>13.6g}{r['torch']:>13.6g}"
      if r["kind"] == "loss"
      else f"{r['band'] if r['band'] is not None else 0.0:>13.2e}{r['norm']:>13.3e}"
    )
    note = f"  ({r['note']})" if r.get("note") else ""
    lines.append(
      f"{r['name']:<28}{nums}{r['rel']:>11.2e}{r['tol']:>11.0e}  "
      f"{'pass' if r['ok'] else 'FAIL'}{note}"
    )
  g = result["gate"]
  if g:
    lines.append(
      f"gate: {g['flips']} of {g['decisions']} decisions flipped "
      f"({g['flips_inside_band']} inside the band {g['band']:g}); agreement "
      f"{g['agreement']:.6f}  {'pass' if g['ok'] else 'FAIL'}"
    )
  lines += [
    "",
    "grad rows: jax column = the gradient's float32 band, torch column = its norm",
    f"{result['steps']} train steps",
    "free: both frameworks run on from the same start; forced: PyTorch restarts each step"
    " from JAX's parameters and Adam state",
    f"{'step':<5}{'total jax':>13}{'total torch':>13}{'d jax':>12}{'d torch':>12}"
    f"{'max rel':>10}{'forced rel':>11}{'forced upd':>11}  gate flips (inside band)",
  ]
  for s in result["train_steps"]:
    dj, dt = s["jax"].get("loss/d"), s["torch"].get("loss/d")
    d = f"{dj:>12.6g}{dt:>12.6g}" if dj is not None else f"{'-':>12}{'-':>12}"
    fl = f"{s['gate']['flips']} ({s['gate']['flips_inside_band']})" if s["gate"] else "-"
    f = s["forced"]
    upd = max((e["rel"] for e in f["update"].values()), default=0.0)
    lines.append(
      f"{s['step']:<5}{s['jax']['loss/total']:>13.7g}{s['torch']['loss/total']:>13.7g}"
      f"{d}{max(s['rel'].values()):>10.2e}{max(f['rel'].values()):>11.2e}{upd:>11.2e}  {fl}"
    )
  tol = result["tolerances"]
  lines += [
    f"worst per-step loss rel err: free {result['worst_step_loss_rel']:.2e} (tolerance "
    f"{tol['step_loss']:.2g}), forced {result['forced_worst_loss_rel']:.2e} (tolerance "
    f"{tol['forced_loss']:.0e})",
    f"worst forced update, norm(jax - torch) / norm(torch update) per group: "
    f"{result['forced_worst_update_rel']:.2e} (tolerance {tol['forced_update']:.2g} = "
    f"max(1e-3, 4 r0))",
  ]
  lines.append(
    f"parameters after {result['steps']} steps: norm(jax - torch) / norm(torch - start)"
    f", tolerance {result['tolerances']['params']:.2g} (Adam's first-step disagreement r0 "
    f"{result['tolerances']['adam_first_step_r0']:.2g})"
  )
  for grp, e in result["divergence"].items():
    ok = e["rel"] <= result["tolerances"]["params"]
    lines.append(
      f"  {grp:<14}{e['rel']:>11.2e}  moved {e['norm']:.3e}  max abs diff "
      f"{e['max_abs']:.2e}  {'pass' if ok else 'FAIL'}"
    )
  return "\n".join(lines)


def plot_train(result: dict, path: str) -> str:
  """PNG: per-step total and D losses of both frameworks, and their relative differences."""
  steps = result["train_steps"]
  xs = [s["step"] for s in steps]
  series = {f"{fw} total": (xs, [s[fw]["loss/total"] for s in steps]) for fw in ("jax", "torch")}
  d_steps = [s for s in steps if "loss/d" in s["jax"]]
  for fw in ("jax", "torch"):
    series[f"{fw} D"] = ([s["step"] for s in d_steps], [s[fw]["loss/d"] for s in d_steps])
  keys = dict.fromkeys(k for s in steps for k in s["rel"])
  rel = {
    k: (
      [s["step"] for s in steps if k in s["rel"]],
      [math.log10(max(s["rel"][k], 1e-12)) for s in steps if k in s["rel"]],
    )
    for k in keys
  }
  forced = {
    "loss (forced)": (
      xs,
      [math.log10(max(max(s["forced"]["rel"].values()), 1e-12)) for s in steps],
    ),
    "update (forced)": (
      xs,
      [
        math.log10(max(max((e["rel"] for e in s["forced"]["update"].values()), default=0), 1e-12))
        for s in steps
      ],
    ),
  }
  pngplot.line_panels(
    path,
    [
      ("losses per step", series),
      ("log10 |jax - torch| / |torch| per step, free", rel),
      ("log10 rel err per step, teacher-forced", forced),
    ],
    title=f"sk-jax parity --train: JAX {result['jax']} vs PyTorch {result['torch']}",
    log_y=False,
  )
  return path
