"""The import graph of arbg: subpackages in pipeline order, arrows only downward, no cycles.

Module-level imports only (imports inside functions and ``if TYPE_CHECKING:`` blocks are not
arrows of the graph). The bottom layer is the top-level modules (``io``, ``reweight``, ...) apart
from ``cli``; ``cli`` is the top.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "arbg"
LAYERS = ["chem", "data", "nn", "train", "sampling", "eval", "experiments"]
NO_TORCH = {"chem"}  # OpenMM side: no torch
NO_OPENMM = {"nn"}  # model side: no OpenMM


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in LAYERS and parts[1] != "cli"):
        return 0  # arbg, arbg.io, arbg.reweight, ...
    if parts[1] == "cli":
        return len(LAYERS) + 1
    return LAYERS.index(parts[1]) + 1


def _top_level_imports(tree: ast.Module) -> list[str]:
    out: list[str] = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                out.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` is an arrow to pkg.mod (resolved in _graph), else to pkg
                out.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for imp in _top_level_imports(ast.parse(path.read_text())):
            if imp.split(".")[0] != "arbg":
                continue
            # `from arbg.x import y` names module arbg.x.y when it is one, else arbg.x
            deps.add(imp if imp in files else imp.rsplit(".", 1)[0] if "." in imp else imp)
        # a package's own __init__ runs before its submodules anyway: not an arrow
        graph[name] = {d for d in deps if d in files and d != name and not name.startswith(d + ".")}
    return graph


GRAPH = _graph()


def test_graph_is_read():
    assert "arbg.cli" in GRAPH and "arbg.chem.systems" in GRAPH
    assert len(GRAPH) > 30


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_arrows_point_down(module):
    up = [d for d in GRAPH[module] if _layer(d) > _layer(module)]
    assert not up, f"{module} (layer {_layer(module)}) imports higher layers: {up}"


def test_no_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            dfs(m)


@pytest.mark.parametrize("package", sorted(NO_TORCH | NO_OPENMM))
def test_heavy_imports_stay_on_their_side(package):
    banned = "torch" if package in NO_TORCH else "openmm"
    for path in (SRC / package).rglob("*.py"):
        imports = _top_level_imports(ast.parse(path.read_text()))
        bad = [i for i in imports if i.split(".")[0] == banned]
        assert not bad, f"{path.name} imports {banned} at module level: {bad}"
