"""Imports point one way: runtime <- core <- export; runtime <- serving; only the app imports everything.

An AST walk over every module (imports inside functions count too: a lazy import is still an arrow).
The layer of a module comes from its folder; ``ALLOWED`` says which layers each may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: folder -> (import prefix, layer)
FOLDERS = {
    "runtime": ("clipq.runtime", "runtime"),
    "export": ("clipq.export", "export"),
    "serving": ("clipq.serving", "serving"),
    "clipq/app": ("clipq.app", "app"),
    "clipq": ("clipq", "core"),
}
ALLOWED = {
    "runtime": {"runtime"},
    "core": {"core", "runtime"},
    "export": {"export", "core", "runtime"},
    "serving": {"serving", "runtime"},
    "app": {"app", "core", "export", "serving", "runtime"},
}
#: of the core, export may use the PyTorch networks only: never the data readers, training or evaluation
EXPORT_CORE = ("clipq.models",)
#: heavy stacks that the torch-free layers must never import
TORCH_FREE = {"runtime", "serving"}
TORCH = ("torch", "transformers", "optimum", "sentence_transformers", "torchvision")


def _layer_of_name(name: str) -> str | None:
    for prefix, layer in sorted(((p, lay) for p, lay in FOLDERS.values()), key=lambda t: -len(t[0])):
        if name == prefix or name.startswith(prefix + "."):
            return layer
    return None


def _modules() -> list[tuple[Path, str, str]]:
    """(file, dotted module name, layer) of every module of the package."""
    out = []
    for folder, (prefix, layer) in FOLDERS.items():
        base = ROOT / folder
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base)
            if folder == "clipq" and rel.parts[0] == "app":
                continue  # the app folder is its own layer
            parts = [*prefix.split("."), *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((f, ".".join(parts), layer))
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return out


def _violations_in(path: Path, module: str, layer: str) -> list[str]:
    bad = []
    for line, target in _imports(path, module):
        where = f"{path}:{line} ({layer}) imports {target}"
        dep = _layer_of_name(target)
        if dep is not None and dep not in ALLOWED[layer]:
            bad.append(where)
        elif layer == "export" and dep == "core" and not target.startswith(EXPORT_CORE):
            bad.append(where + " (export may use only clipq.models of the core)")
        if layer in TORCH_FREE and target.split(".")[0] in TORCH:
            bad.append(where + " (torch-free layer)")
    return bad


def violations() -> list[str]:
    return [v for path, module, layer in _modules() for v in _violations_in(path, module, layer)]


def test_imports_point_one_way():
    bad = violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_walk_sees_every_layer_and_lazy_imports():
    """Guard the guard: the walk finds modules of every layer and catches a function-level import."""
    layers = {layer for _, _, layer in _modules()}
    assert layers == set(ALLOWED)
    mods = {m for _, m, _ in _modules()}
    assert {"clipq.runtime.engines", "clipq.app.cli", "clipq.export.pipeline", "clipq.serving.repository",
            "clipq.evaluate"} <= mods
    assert _layer_of_name("clipq.app.demo_stages") == "app" and _layer_of_name("clipq.readers") == "core"


@pytest.mark.parametrize("src, module, layer", [
    ("def f():\n    from clipq.readers import World\n", "clipq.export.mod", "export"),
    ("from ..app import cli\n", "clipq.train.mod", "core"),
    ("from .. import serving\n", "clipq.runtime.mod", "runtime"),
    ("import torch\n", "clipq.serving.mod", "serving"),
    ("from clipq.export import export_artifacts\n", "clipq.serving.mod", "serving"),
])
def test_a_bad_arrow_is_caught(tmp_path, src, module, layer):
    f = tmp_path / "mod.py"
    f.write_text(src)
    assert len(_violations_in(f, module, layer)) == 1


def test_good_arrows_pass(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("from clipq.models.io import load_for_export\nfrom clipq.runtime.manifest import Manifest\n")
    assert _violations_in(f, "clipq.export.mod", "export") == []


def test_training_sits_below_the_evaluation():
    """``clipq.evaluate`` scores what the trainers made; no trainer imports it back (they share ``train.recall``)."""
    bad = [f"{path}:{line} imports {target}" for path, module, _ in _modules() if module.startswith("clipq.train")
           for line, target in _imports(path, module) if target == "clipq.evaluate" or target.startswith("clipq.evaluate.")]
    assert not bad, "\n".join(bad)
