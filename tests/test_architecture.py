"""The package's shape, checked: no import cycle, no import inside a function but the documented lazy ones, layers
that only know the ones below (ARCHITECTURE.md), and every module importable first, in any order.

The lazy imports allowed: heavy optional libraries on a cold path (ONNX export, plots, the NAS search's optuna, ROUGE,
Parquet files, torch's semi-structured kernels, int8 quantization (torch.ao),
scikit-learn's splits and metrics), `prunekit.load` / `prunekit.save` (PEP 562, so `import prunekit`
stays light) and the CLI's `_api()` (a command imports the library when it runs: `--help` and bad arguments answer
without torch)."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit

PACKAGE = Path(prunekit.__file__).parent
# heavy, on a cold path: ONNX export, plots, the NAS search, ROUGE, Parquet, GPU 2:4 kernels, data splits and metrics
LAZY_LIBRARIES = ("onnx", "onnxruntime", "matplotlib", "optuna", "rouge_score", "pyarrow", "torch.sparse", "sklearn",
                  "torch.ao.quantization")  # fmt: skip
LAZY_OWN = {"prunekit/__init__.py": {"prunekit.runs"}}  # module -> the prunekit modules it may import lazily
# bottom to top; a module may import its own layer and the layers below it. `methods.base` (the protocol the trainer
# drives) sits below `train`, the method folders above it.
LAYERS = [
    "core", "topology", "patterns", "masks", "importance", "compact", "kernels", "catalog", "tasks", "runs", "bench",
    "costs", "methods.base", "train", "methods", "recipe", "report", "pipelines", "integrations", "api", "cli",
]  # fmt: skip


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import outside `if TYPE_CHECKING:`."""
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                base = child.module
                out.extend((f"{base}.{a.name}", child.lineno, in_function) for a in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for name, _, _ in _imports(path):
            target = _resolve(name, modules) if name.startswith("prunekit") else None
            if target and target != mod:
                graph[mod].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")[1:]
    if not parts:
        return None  # the package itself: only the lazy load / save
    if parts[:2] == ["methods", "base"] or parts == ["methods"]:  # the protocol and its (empty) package
        return LAYERS.index("methods.base")
    return LAYERS.index(parts[0]) if parts[0] in LAYERS else None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "prunekit"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from prunekit.b import y\n")
    (pkg / "b.py").write_text("def f():\n    from prunekit.a.x import g\n")
    assert _cycle(_graph(pkg)) == ["prunekit.a.x", "prunekit.b", "prunekit.a.x"]


def test_imports_inside_functions_are_only_the_documented_lazy_ones():
    offenders = []
    for path in _modules().values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for name, line, in_function in _imports(path):
            if not in_function:
                continue
            lazy_library = any(name == lib or name.startswith(lib + ".") for lib in LAZY_LIBRARIES)
            own = any(name == m or name.startswith(m + ".") for m in LAZY_OWN.get(rel, ()))
            if not (lazy_library or own):
                offenders.append(f"{rel}:{line}: {name}")
    assert offenders == []


def test_each_layer_imports_only_itself_and_the_layers_below():
    graph = _graph()
    upward = []
    for mod, targets in graph.items():
        low = _layer(mod)
        for target in targets:
            high = _layer(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{mod} ({LAYERS[low]}) imports {target} ({LAYERS[high]})")
    assert upward == []
    listed = {m.split(".")[1] for m in graph if m.count(".") >= 1} - {"methods"}
    assert listed <= set(LAYERS), f"a module outside the layer list: {sorted(listed - set(LAYERS))}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_module_imports_first_in_any_order(seed):
    """Each order in a fresh interpreter: a cycle hidden behind a lazy attribute or a package __init__ would fail
    here where the static graph cannot see it."""
    names = sorted(_modules())
    random.Random(seed).shuffle(names)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
