"""The import-layers contract of DESIGN.md, read from the source with ast: an import only points down the layers,
inference and training never import each other, and no import closes a circle (between modules, or between
the packages they belong to). Every import counts, inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffwave"

# Top to bottom. A module belongs to the longest name listed here that it is or lies under ("diffwave" is the
# package's own __init__: the public API, which re-exports from every layer).
LAYERS: list[set[str]] = [
    {"diffwave", "diffwave.__main__", "diffwave.cli"},
    {"diffwave.inference", "diffwave.training"},
    {"diffwave.checkpoints", "diffwave.evaluation", "diffwave.pretrained"},
    {"diffwave.model", "diffwave.data", "diffwave.audio"},
    {"diffwave.diffusion", "diffwave.config", "diffwave.errors", "diffwave.fileio", "diffwave.precision",
     "diffwave.threads", "diffwave._torch_version"},
]
INDEPENDENT = [frozenset({"diffwave.inference", "diffwave.training"})]

Graph = dict[str, set[str]]


def module_names(root: Path) -> set[str]:
    """Dotted names of the modules and packages under `root` (a package folder)."""
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_graph(root: Path) -> Graph:
    """module -> the package's modules it imports (a `from X import name` imports X.name when that is a module)."""
    modules = module_names(root)
    graph: Graph = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == root.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package, up level - 1 more
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != root.name:
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        targets.discard(name)
    return graph


def component(module: str) -> str | None:
    """The name in LAYERS that `module` belongs to (the longest that it is or lies under), or None."""
    owners = [name for layer in LAYERS for name in layer
              if module == name or (name != "diffwave" and module.startswith(f"{name}."))]
    return max(owners, key=len) if owners else None


def layer_of(name: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if name in layer)


def cycles(graph: Graph) -> list[list[str]]:
    """One circle through each strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(graph: Graph) -> list[str]:
    """Every breach of the contract in `graph`, one line each (empty: the contract holds)."""
    problems = []
    for module in sorted(graph):
        if component(module) is None:
            problems.append(f"{module} is in no layer: place it in DESIGN.md's layers and in LAYERS here")
    components: Graph = {}
    for module, targets in sorted(graph.items()):
        source = component(module)
        for target in sorted(targets):
            owner = component(target)
            if source is None or owner is None or owner == source:
                continue
            components.setdefault(source, set()).add(owner)
            if layer_of(owner) < layer_of(source):
                problems.append(f"{module} imports {target}: {source} may not import the layer above it ({owner})")
            elif frozenset({source, owner}) in INDEPENDENT:
                problems.append(f"{module} imports {target}: {source} and {owner} never import each other")
    problems += [f"modules import each other in a circle: {' <-> '.join(members)}" for members in cycles(graph)]
    problems += [f"packages import each other in a circle: {' <-> '.join(members)}" for members in cycles(components)]
    return problems


def test_the_package_keeps_its_import_layers():
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "diffwave.checkpoints" in graph["diffwave.training.trainer"]
    assert violations(graph) == []


@pytest.mark.parametrize(("edges", "expected"), [
    ({"diffwave.model.diffwave": {"diffwave.inference.vocoder"}},
     "diffwave.model may not import the layer above it (diffwave.inference)"),
    ({"diffwave.training.trainer": {"diffwave.inference.vocoder"}},
     "diffwave.training and diffwave.inference never import each other"),
    ({"diffwave.inference.vocoder": {"diffwave.training.trainer"}},
     "diffwave.inference and diffwave.training never import each other"),
    ({"diffwave.model.cpu_kernels": {"diffwave.model.diffwave"},
      "diffwave.model.diffwave": {"diffwave.model.cpu_kernels"}},
     "modules import each other in a circle: diffwave.model.cpu_kernels <-> diffwave.model.diffwave"),
    ({"diffwave.data.dataset": {"diffwave.audio.mel"}, "diffwave.audio.io": {"diffwave.data.corpus"}},
     "packages import each other in a circle: diffwave.audio <-> diffwave.data"),
    ({"diffwave.metrics": set()}, "diffwave.metrics is in no layer"),
])
def test_the_contract_reports_a_bad_import_graph(edges, expected):
    """Negative control: the real graph with one bad edge (or module) added is refused, naming the breach."""
    graph = {module: set(targets) for module, targets in import_graph(PACKAGE).items()}
    for module, targets in edges.items():
        graph.setdefault(module, set()).update(targets)
    assert any(expected in line for line in violations(graph)), violations(graph)


def test_relative_imports_and_submodules_are_resolved(tmp_path):
    """`from . import x`, `from .. import y` and `from pkg import submodule` name the modules they load."""
    root = tmp_path / "diffwave"
    (root / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (root / name).write_text("")
    (root / "sub" / "b.py").write_text("from . import c\nfrom .. import a\nfrom diffwave import sub\n")
    (root / "sub" / "c.py").write_text("import diffwave.a\nfrom diffwave.sub.b import thing\n")
    graph = import_graph(root)
    assert graph["diffwave.sub.b"] == {"diffwave.sub.c", "diffwave.a", "diffwave.sub"}
    assert graph["diffwave.sub.c"] == {"diffwave.a", "diffwave.sub.b"}
    assert cycles(graph) == [["diffwave.sub.b", "diffwave.sub.c"]]
