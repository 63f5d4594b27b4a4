"""The package's import graph, read from the source with ast: no circles, and imports point down the layers.

The layers are written out here, independently of the code, and documented in
docs/architecture.md ("Layers"). Every ``import`` statement counts, also those inside functions
(zhlora imports heavy libraries lazily, but a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zhlora

PACKAGE_DIR = Path(zhlora.__file__).parent

# (layer, module prefixes), lowest first; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared", ("zhlora", "zhlora.errors", "zhlora.io_utils", "zhlora.threads", "zhlora.locking", "zhlora.progress",
                "zhlora.filenames", "zhlora.forgetting_budget", "zhlora.differences")),
    ("data", ("zhlora.data",)),
    ("config", ("zhlora.config",)),
    ("model", ("zhlora.models",)),
    ("training + evaluation", ("zhlora.training", "zhlora.evaluation")),
    ("monitoring + analysis", ("zhlora.monitoring", "zhlora.analysis")),
    ("recipes", ("zhlora.recipes",)),
    ("pipeline", ("zhlora.experiment",)),
    ("CLI", ("zhlora.cli", "zhlora.__main__", "zhlora.commands")),
]


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` from every .py file under ``package_dir``."""
    files = {_module_name(path, package_dir): path for path in package_dir.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import; zhlora imports absolutely"
                # `from zhlora.x import y` imports the module zhlora.x.y when there is one, else names of zhlora.x
                targets.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                               for alias in node.names)
        graph[module] = {target for target in targets if target in files and target != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer (longest matching prefix)."""
    best, best_length = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = rank, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_cycle_finder_finds_a_planted_circle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(planted) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports_inside_functions(graph):
    # commands/train.py imports the recipe inside main() only
    assert "zhlora.recipes.train" in graph["zhlora.commands.train"]


def test_no_import_circle_between_modules(graph):
    assert find_cycles(graph) == []


def test_every_module_is_in_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_imports_point_down_the_layers(graph):
    assert upward_arrows(graph) == []


LIBRARY_FOLDERS = ("data", "models", "training", "evaluation", "monitoring", "analysis")


def folder_of(module: str) -> str:
    """``zhlora.training.loop`` -> ``training``; a top-level module is its own folder."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else module


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a higher layer, as readable lines."""
    return sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items() for target in targets
        if layer_of(target) > layer_of(module)
    )


def library_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a library folder into recipes, the pipeline, the CLI, or a higher library layer."""
    return [line for line in upward_arrows(graph) if folder_of(line.split(" ", 1)[0]) in LIBRARY_FOLDERS]


def folder_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles between folders (a folder imports another that imports it back, directly or not)."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folders.setdefault(folder_of(module), set()).update(
            folder_of(target) for target in targets if folder_of(target) != folder_of(module))
    return find_cycles(folders)


def test_recipes_are_the_layer_above_the_library():
    assert layer_of("zhlora.recipes.train") > max(layer_of(f"zhlora.{name}.x") for name in LIBRARY_FOLDERS)
    assert layer_of("zhlora.recipes.evaluate") < layer_of("zhlora.experiment.plan") < layer_of("zhlora.commands.train")


def test_no_library_folder_imports_upward(graph):
    assert library_violations(graph) == []


def test_no_circle_between_folders(graph):
    assert folder_cycles(graph) == []


def test_a_planted_violation_is_caught(graph):
    """The checks above fail when the library reaches up: planted in a copy of the real graph."""
    planted = {module: set(targets) for module, targets in graph.items()}
    planted["zhlora.training.loop"].add("zhlora.recipes.train")  # library -> recipe
    planted["zhlora.evaluation.runner"].add("zhlora.monitoring.probes")  # lower library layer -> higher one
    violations = library_violations(planted)
    assert any("zhlora.training.loop (training + evaluation) imports zhlora.recipes.train" in line for line in violations)
    assert any("zhlora.evaluation.runner" in line and "zhlora.monitoring.probes" in line for line in violations)
    assert any({"evaluation", "monitoring"} <= set(cycle) for cycle in folder_cycles(planted))


def test_config_imports_only_lower_layers(graph):
    config = layer_of("zhlora.config")
    assert graph["zhlora.config"], "zhlora.config imports nothing of zhlora? the graph is broken"
    assert {target for target in graph["zhlora.config"] if layer_of(target) >= config} == set()


def test_commands_do_not_import_other_commands_or_the_cli(graph):
    verbs = {module for module in graph if module.startswith("zhlora.commands.")
             and not module.rsplit(".", 1)[1].startswith("_")}
    assert len(verbs) >= 10
    for module in verbs:
        assert graph[module] & verbs == set(), module
        assert "zhlora.cli" not in graph[module], f"{module} imports zhlora.cli: take the runner as an argument"

