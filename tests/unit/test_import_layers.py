"""The package's layers import one way: core <- data <- model <- decode <- training <- entry points.

Every ``import`` statement of every module under ``mt/`` counts, wherever it stands (module level,
inside a function, under ``TYPE_CHECKING``): moving an import into a function does not hide it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "mt"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = {
    "core": ("mt.errors", "mt.atomic", "mt.compat", "mt.config", "mt.device", "mt.faults"),
    "data": ("mt.data",),
    "model": ("mt.model",),
    "decode": ("mt.decode",),
    "training": ("mt.training",),
    "entry points": (
        "mt.cli",
        "mt.train",
        "mt.evaluate",
        "mt.translate",
        "mt.report",
        "mt.average",
        "mt.export",
        "mt.convert",
        "mt.trials",
    ),
}
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
LEAVES = ("mt.errors", "mt.compat", "mt.faults")  # import nothing of mt


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in RANK if module == prefix or module.startswith(prefix + ".")]
    return RANK[max(matches, key=len)] if matches else None


def imports_in(source: str, package: str) -> set[str]:
    """The mt modules imported anywhere in ``source`` (a module of ``package``): ``from mt.x import y``
    counts as ``mt.x.y`` when that is a module, else as ``mt.x``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {name for name in found if name == "mt" or name.startswith("mt.")}


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), package)


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_belongs_to_a_layer():
    assert [module for module in MODULES if module != "mt" and layer_of(module) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    rank = layer_of(module)
    upward = sorted(name for name in GRAPH[module] if (layer_of(name) or 0) > (rank or 0))
    assert upward == [], f"{module} ({list(LAYERS)[rank or 0]}) imports {upward}"


DECODING = ("mt.translate", "mt.evaluate", "mt.report", "mt.average", "mt.export", "mt.trials")


def closure(module: str) -> set[str]:
    """``module`` and every mt module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo.extend(GRAPH[name])
    return seen


def libraries_in(module: str) -> set[str]:
    """The top-level packages that ``module`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("command", DECODING)
def test_decoding_commands_reach_neither_lightning_nor_the_training_code(command):
    """Everything a decoding command can import, in any function, holds no Lightning and no mt.training:
    a checkpoint loads straight into the model and tokenizer."""
    reached = closure(command)
    assert sorted(m for m in reached if m == "mt.training" or m.startswith("mt.training.")) == []
    lightning = sorted(m for m in reached if libraries_in(m) & {"lightning", "lightning_fabric", "pytorch_lightning"})
    assert lightning == []


def test_the_entry_point_shape_imports_only_the_core():
    assert GRAPH["mt.cli"] <= set(LAYERS["core"])


def test_the_leaves_import_nothing_of_mt():
    assert {leaf: sorted(GRAPH[leaf]) for leaf in LEAVES} == {leaf: [] for leaf in LEAVES}
    for module in ("mt.config", "mt.atomic", "mt.device"):  # their errors only
        assert GRAPH[module] <= {"mt.errors"}, module


def test_there_is_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for name in sorted(GRAPH.get(module, ())):
            visit(name, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_the_walker_sees_imports_in_functions_type_checking_blocks_and_relative_forms():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mt.cli import to_typed\n"
        "def f():\n    from mt.training import run\n    import mt.train\n"
        "class C:\n    def g(self):\n        from ..decode.search import beam_search\n"
    )
    assert imports_in(source, "mt.model") == {"mt.cli", "mt.training.run", "mt.train", "mt.decode.search"}
