"""The package's shape: no import cycle inside dora_fx (lazy and TYPE_CHECKING imports count),
the layer contracts of pyproject hold (``lint-imports``), and a saved stage file imports torch
and its own code only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import dora_fx

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_inside_dora_fx():
    graph = grimp.build_graph("dora_fx", include_external_packages=False, cache_dir=None)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (each a set of modules importing each other): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_check_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c"}

        def find_modules_directly_imported_by(self, m):
            return {"a": {"b"}, "b": {"a"}, "c": {"a"}}[m]

    assert _cycles(Graph()) == [["a", "b"]]  # type: ignore[arg-type]


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed (pip install -e .[dev])")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_a_saved_stage_file_imports_torch_and_its_own_code_only(tmp_path):
    model = torch_mlp()
    devices = dora_fx.scenarios.smart_home()
    import torch

    compiled = dora_fx.compile(model, devices, num_stages=2, example_inputs=(torch.randn(4, 16),))
    folder = compiled.save(tmp_path / "plan")
    probe = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("stage_1", {str(folder / "stage_1.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.Stage1()
heavy = sorted(m for m in ("cvxpy", "highspy", "scipy", "sympy", "transformers", "matplotlib")
               if m in sys.modules)
ours = sorted(m for m in sys.modules if m.startswith("dora_fx"))
print(heavy, ours)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    heavy, ours = done.stdout.strip().rsplit("] [", 1)
    assert heavy == "[", f"a stage file pulled in {heavy}]"
    assert ours == "'dora_fx', 'dora_fx.ir', 'dora_fx.ir.comm_ops']"


def torch_mlp():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()


def test_no_module_is_over_400_lines():
    """The project keeps modules to a few hundred lines, one idea per file."""
    package = Path(dora_fx.__file__).parent
    long = {
        str(p.relative_to(package)): n
        for p in package.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"modules over 400 lines: {long}"
