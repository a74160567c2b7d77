"""The package's layout: imports between subpackages point one way, no module imports itself in a
circle, and modules stay short. Reads the sources' ASTs (function-level imports included)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bottom to top: a module may import from its own layer and the layers before it.
LAYERS = (
  "version",
  "errors",
  "nn",
  "io",
  "config",
  "inference",
  "eval",
  "train",
  "interop",
  "export",
  "serve",
  "cli",
  "__init__",
)
MAX_LINES = 400
LONG_FOR_NOW: set[str] = set()


def _modules() -> dict[str, str]:
  mods = {}
  for folder, _, names in os.walk(os.path.join(ROOT, "sk_jax")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[dotted.removesuffix(".__init__")] = path
  return mods


def _imports(path: str, mods) -> set[str]:
  out = set()
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sk_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        out.add(full if full in mods else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("sk_jax"))
  return out


def _layer(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph():
  mods = _modules()
  return mods, {m: _imports(p, mods) for m, p in mods.items()}


def test_every_module_is_in_a_layer(graph):
  mods, _ = graph
  assert {_layer(m) for m in mods} <= set(LAYERS)


def test_imports_point_down(graph):
  _, edges = graph
  upward = [
    f"{m} -> {t}"
    for m, targets in edges.items()
    for t in targets
    if LAYERS.index(_layer(t)) > LAYERS.index(_layer(m))
  ]
  assert not upward, upward


def test_no_import_cycles(graph):
  _, edges = graph
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for t in sorted(edges.get(m, ())):
      if t not in edges or t == m:
        continue
      assert state.get(t) != 1, " -> ".join(stack + [m, t])
      if t not in state:
        visit(t, stack + [m])
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m, [])


def test_modules_are_short(graph):
  mods, _ = graph
  long = {}
  for m, path in mods.items():
    with open(path) as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES and m not in LONG_FOR_NOW:
      long[m] = n
  assert not long, long
