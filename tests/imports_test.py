"""Imports run one way: tokenizers -> model -> train / rollout; the entry points build data and hand it in.

Read from the source with `ast` (every import statement, at the top of a file or inside a function), so a
new import the wrong way fails here rather than in a cycle at run time.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"gato_jax.main", "gato_jax.evaluate", "gato_jax.dagger", "gato_jax.sample", "gato_jax.compile",
                "gato_jax.bench", "gato_jax.cli", "gato_jax.logs"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(f"{node.module}.{alias.name}", id(node) in nested) for alias in node.names]
    return out


MODULES = {module_name(p): imports(p) for package in ("gato_jax", "data_pipelines")
           for p in sorted((REPO / package).rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# Layer -> what of ours it may import (besides itself). The core never imports data_pipelines.
ALLOWED = {
    "gato_jax.tokenizers": ("gato_jax.tokenizers", "gato_jax.errors"),
    "gato_jax.sharding": ("gato_jax.errors",),
    "gato_jax.perception": ("gato_jax.perception", "gato_jax.model", "gato_jax.tokenizers", "gato_jax.sharding",
                            "gato_jax.errors"),
    "gato_jax.model": ("gato_jax.model", "gato_jax.tokenizers", "gato_jax.sharding", "gato_jax.perception",
                       "gato_jax.errors"),
    "gato_jax.train": ("gato_jax.train", "gato_jax.model", "gato_jax.tokenizers", "gato_jax.sharding",
                       "gato_jax.errors", "gato_jax.configs"),
    "gato_jax.load": ("gato_jax.train.checkpoint", "gato_jax.model", "gato_jax.tokenizers", "gato_jax.sharding",
                      "gato_jax.errors"),
    "gato_jax.rollout": ("gato_jax.rollout", "gato_jax.load", "gato_jax.model", "gato_jax.tokenizers",
                         "gato_jax.sharding", "gato_jax.train.loss", "gato_jax.train.partial", "gato_jax.errors"),
    # Frozen perception experts label data (Prismer's shape masks); nothing of training, acting or loading.
    "data_pipelines": ("data_pipelines", "gato_jax.tokenizers", "gato_jax.perception", "gato_jax.errors",
                       "gato_jax.cli", "gato_jax.logs", "gato_jax.configs"),
    # The config defaults and the helpers that read them (train_seed): a leaf any layer may read.
    "gato_jax.configs": (),
}


def layer(name: str) -> str | None:
    return max((p for p in ALLOWED if within(name, p)), key=len, default=None)


@pytest.mark.parametrize("name", [m for m in MODULES if layer(m)])
def test_imports_run_one_way(name):
    allowed = ALLOWED[layer(name)]
    ours = [m for m, _ in MODULES[name] if within(m, "gato_jax", "data_pipelines")]
    wrong = [m for m in ours if not within(m, *allowed)]
    assert not wrong, f"{name} imports {wrong}; it may import only {allowed}"


@pytest.mark.parametrize("name", [m for m in MODULES if m not in ENTRY_POINTS])
def test_no_import_of_ours_hidden_in_a_function(name):
    hidden = [m for m, inside in MODULES[name] if inside and within(m, "gato_jax", "data_pipelines")]
    assert not hidden, f"{name} imports {hidden} inside a function: import at the top, or remove the cycle"


def test_the_rules_cover_every_core_module():
    core = [m for m in MODULES if within(m, "gato_jax") and m not in ENTRY_POINTS and m not in ("gato_jax",)]
    assert [m for m in core if layer(m) is None] == ["gato_jax.errors"]


def test_no_test_patches_sys_modules_for_our_packages():
    for path in (REPO / "tests").glob("*.py"):
        text = path.read_text()
        assert "sys.modules, f\"data_pipelines" not in text and "sys.modules, \"data_pipelines" not in text, path
        assert "sys.modules, \"gato_jax" not in text, path
