"""The import graph: no cycles, function-local imports included, and a command line that starts without JAX."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "xai_jax"


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph_modules() -> list[str]:
    """Every module of the package, by dotted name."""
    return sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    """``{module: project modules it imports}``, every ``import`` statement counted, at any depth, except those
    under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert {"xai_jax.cli.main", "xai_jax.cli.nma", "xai_jax.methods.www", "xai_jax.kernels.near_miss"} <= set(graph)
    assert "xai_jax.cli.common" in graph["xai_jax.cli.nma"]
    assert cycles(graph) == []


def test_kernels_import_nothing_of_the_project():
    graph = import_graph()
    kernels = {m for m in graph if m == "xai_jax.kernels" or m.startswith("xai_jax.kernels.")}
    outside = {m: sorted(graph[m] - kernels) for m in kernels}
    assert {m: d for m, d in outside.items() if d} == {}
    assert graph["xai_jax.kernels"] == kernels - {"xai_jax.kernels"}  # the package re-exports every module


def test_kernels_package_exports_every_public_function_and_state_type():
    import importlib

    import xai_jax.kernels as kernels
    # Defined in two modules (cladec, srae) / named like its module: reached through the module.
    through_module = {"reconstruction_loss", "floyd_warshall"}
    expected, modules = set(), set()
    for name in graph_modules():
        if not name.startswith("xai_jax.kernels."):
            continue
        module = importlib.import_module(name)
        modules.add(name.rsplit(".", 1)[1])
        expected |= {n for n, v in vars(module).items() if not n.startswith("_") and n not in through_module
                     and callable(v) and getattr(v, "__module__", None) == name}
    assert set(kernels.__all__) == expected | modules
    assert all(getattr(kernels, n) is not None for n in kernels.__all__)
    assert kernels.floyd_warshall.__name__ == "xai_jax.kernels.floyd_warshall"  # still the module


def test_the_command_line_parses_without_importing_jax():
    code = ("import sys; from xai_jax import cli; cli.build_parser().format_help(); "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('jax', 'flax')))")
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
