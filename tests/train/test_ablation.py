"""benchmarks/ablate_attention.py without training: its variants, the JSON it writes and the plots."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ablate():
  spec = importlib.util.spec_from_file_location(
    "ablate_attention", os.path.join(ROOT, "benchmarks", "ablate_attention.py")
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_variants_are_valid_configs_and_the_default_is_one_of_them(ablate):
  from sk_jax.nn.generator import ModelConfig

  assert set(ablate.ORDER) == set(ablate.VARIANTS)
  for name, (model, _) in ablate.VARIANTS.items():
    ModelConfig(**model)  # raises on a bad field
  # configs/default.py is one of the ablated readings
  assert ablate.default_variant_name() in ablate.VARIANTS


def test_json_shape_and_plots(ablate, tmp_path):
  steps, ns = 4, 16

  def record(attention, topk, kept):
    curve = [[s, kept] for s in range(1, steps + 1)]
    curves = {k: [3.0, 2.5, 2.0, 1.5] for k in ("loss/content", "loss/style", "loss/total")}
    return {
      "attention": attention,
      "topk": topk,
      "kept_fraction_final": kept,
      "kept_fraction_curve": curve,
      "kept_nodes_final": kept * ns,
      "content_loss": 1.5,
      "style_loss": 1.5,
      "total_loss": 1.5,
      "seconds": 1.0,
      "curves": curves,
      "heldout_content_loss": 2.0,
      "heldout_style_loss": 3.0,
      "heldout_total_loss": 5.0,
    }

  out = {
    "steps": steps,
    "size": 32,
    "batch": 2,
    "style_positions": ns,
    "variants": {
      "full": record("full", None, 1.0),
      "topk4": record("topk", 4, 0.25),
      "cgm_paper": record("cgm", None, 0.5),
    },
  }
  path = str(tmp_path / "ablation_test.json")
  ablate.write_json(out, path)
  ablate.plot(path)
  with open(path) as f:
    res = json.load(f)
  assert res["default"] in ablate.VARIANTS
  for v in res["variants"].values():
    assert {
      "attention",
      "topk",
      "kept_fraction_final",
      "kept_fraction_curve",
      "content_loss",
      "style_loss",
      "total_loss",
      "seconds",
    } <= set(v)
  for suffix in ("loss", "fig3", "kept"):
    assert os.path.getsize(tmp_path / f"ablation_test_{suffix}.png") > 1000


def test_holding_criteria(ablate):
  """The band share after the warm-up and the second half's trend (docs/method.md)."""
  import numpy as np

  steps = np.arange(1, 1001)
  flat = 0.25 + 0.05 * np.sin(steps)  # inside 0.25 +- 0.1 everywhere, no trend
  h = ablate.holding(steps, flat, 0.25)
  assert h["in_band_share"] == 1.0 and abs(h["trend_per_1000"]) < 0.01
  creep = np.linspace(0.2, 0.6, 1000)  # leaves the band at 0.35, trend 0.4 per 1000 steps
  h = ablate.holding(steps, creep, 0.25)
  assert 0.15 < h["in_band_share"] < 0.25
  assert h["trend_per_1000"] == pytest.approx(0.4 * 1000 / 999, rel=1e-6)
  assert "in_band_share" not in ablate.holding(steps, creep, None)


def test_long_runs_merge_across_lengths_and_tabulate_the_criteria(ablate, tmp_path):
  """Runs of different lengths (a long run stopped early) merge, each keeping its length; the
  long table reports the band share, the trend and the spread over positions per variant."""
  import json

  import numpy as np

  def result(name, steps, model, kept):
    curve = [[s, kept + 0.01 * np.sin(s)] for s in range(1, steps + 1)]
    rec = {
      "attention": model["attention"],
      "topk": None,
      "model": model,
      "kept_fraction_final": kept,
      "kept_fraction_curve": curve,
      "kept_nodes_final": kept * 16,
      "content_loss": 1.0,
      "style_loss": 1.0,
      "total_loss": 1.0,
      "seconds": 1.0,
      "curves": {
        "loss/content": [1.0] * steps,
        "loss/style": [1.0] * steps,
        "loss/total": [1.0] * steps,
        "gate/kept_std": [0.1] * steps,
      },
      "holding": ablate.holding(
        [s for s, _ in curve], [k for _, k in curve], model.get("gate_target")
      ),
      "heldout_content_loss": 2.0 if name == "full" else 2.1,
      "heldout_style_loss": 3.0,
      "heldout_total_loss": 5.0,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(
      json.dumps(
        {"steps": steps, "size": 32, "batch": 2, "seed": 0, "style_positions": 16}
        | {"command": "x", "variants": {name: rec}}
      )
    )
    return str(path)

  paths = [
    result("full", 300, {"attention": "full"}, 1.0),
    result("cgm_budget0.25", 250, {"attention": "cgm", "gate_target": 0.25}, 0.3),
  ]
  out = str(tmp_path / "long.json")
  ablate.main(["--out", out, "--merge", *paths])
  res = json.loads(open(out).read())
  assert res["steps"] == 300
  assert [res["variants"][n]["steps"] for n in ("full", "cgm_budget0.25")] == [300, 250]
  rows = {r.split(" | ")[0].strip("| "): r for r in ablate.long_table(out).splitlines()[2:]}
  assert " | 250 | 0.300 | 100% | " in rows["cgm_budget0.25"]
  assert "0.100 (0.100)" in rows["cgm_budget0.25"] and "+5.0% / +0.0%" in rows["cgm_budget0.25"]
  assert os.path.getsize(tmp_path / "long_kept.png") > 1000


def test_corpus_scores_every_trained_variant(ablate, tmp_path, tiny_generator, photo, texture):
  """--eval-dir: each variant's exported generator scores every photo with every painting of the
  folder (per-pair means and their standard errors); a variant whose workdir is gone is left as
  it was."""
  import json

  import jax

  from sk_jax.io import artifacts, images
  from sk_jax.nn.generator import ModelConfig, init_params

  artifacts.save_generator(str(tmp_path / "run" / "generator"), *tiny_generator)
  centred = ModelConfig(gate_hidden=8, kernel_hidden=16, gate_target=0.25, gate_center=True)
  artifacts.save_generator(
    str(tmp_path / "centred" / "generator"), init_params(centred, jax.random.key(0)), centred
  )
  for kind, pictures in (
    ("content", (photo, photo[::-1])),
    ("style", (texture, texture.transpose(1, 0, 2))),
  ):
    (tmp_path / "eval" / kind).mkdir(parents=True)
    for i, picture in enumerate(pictures):
      images.save_image(picture[:96, :64], str(tmp_path / "eval" / kind / f"{i}.png"))
  record = {"attention": "cgm", "kept_fraction_curve": [[1, 0.5]], "workdir": str(tmp_path / "run")}
  res = {"size": 32, "style_positions": 16, "variants": {"cgm": record, "gone": dict(record)}}
  res["variants"]["gone"]["workdir"] = str(tmp_path / "missing")
  res["variants"]["centred"] = {**record, "workdir": str(tmp_path / "centred")}
  path = tmp_path / "long.json"
  path.write_text(json.dumps(res))
  ablate.evaluate_corpus(str(path), str(tmp_path / "eval"))
  out = json.loads(path.read_text())["variants"]
  assert "corpus" not in out["gone"]
  corpus = out["cgm"]["corpus"]
  assert (corpus["photos"], corpus["paintings"]) == (2, 2)
  assert corpus["content_loss"] > 0 and corpus["style_loss"] > 0
  assert corpus["content_loss_sem"] > 0  # four different pairs
  assert 0 < corpus["kept_fraction"] < 1
  # E_f switched off is scored for the centred gate only
  assert "corpus_ef_off" not in out["cgm"]
  assert set(out["centred"]["corpus_ef_off"]) == set(out["centred"]["corpus"])
