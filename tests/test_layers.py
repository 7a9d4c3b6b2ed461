"""The import graph of arbg: subpackages in pipeline order, arrows only downward, no circles, one
home per name.

Every import counts as an arrow: module level, inside functions, under ``if TYPE_CHECKING:``.
The bottom layer is the top-level modules (``files``, ``reweight``, ...); ``cli`` is the top.
A package's ``__init__`` is its public face: it may re-export the names of its own modules, and
no module of the package imports it (that would be a circle through the face).
"""

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "arbg"
LAYERS = ["chem", "data", "nn", "train", "sampling", "eval", "experiments"]
NO_TORCH = {"chem"}  # OpenMM side: no torch
NO_OPENMM = {"nn"}  # model side: no OpenMM


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in SRC.rglob("*.py")}
PACKAGES = {name for name, p in FILES.items() if p.name == "__init__.py"}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in LAYERS and parts[1] != "cli"):
        return 0  # arbg, arbg.files, arbg.reweight, ...
    if parts[1] == "cli":
        return len(LAYERS) + 1
    return LAYERS.index(parts[1]) + 1


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(FILES[module].read_text())


def _imports(module: str, top_level_only: bool = False) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) of every absolute ``arbg`` import."""
    out: list[tuple[str, str | None]] = []
    nodes = _tree(module).body if top_level_only else ast.walk(_tree(module))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import (use absolute arbg.* imports)")
        if isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names if a.name.split(".")[0] == "arbg")
        elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "arbg":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, None) if sub in FILES else (node.module, a.name))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {d for d, _ in _imports(m) if d in FILES and d != m} for m in FILES}


GRAPH = _graph()


def _defined(module: str) -> set[str]:
    """Names bound in the module's own body by def, class or assignment."""
    names: set[str] = set()
    for node in _tree(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Assign):
                    for t in sub.targets:
                        names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _all(module: str) -> list[str]:
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]
    return []


def test_graph_is_read():
    assert "arbg.cli" in GRAPH and "arbg.chem.systems" in GRAPH
    assert len(GRAPH) > 30


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_arrows_point_down(module):
    up = [d for d in GRAPH[module] if _layer(d) > _layer(module)]
    assert not up, f"{module} (layer {_layer(module)}) imports higher layers: {up}"


def test_no_circles():
    """No circle at all: function-level imports and imports of a package's face included."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                circle = stack[stack.index(d) :] + [d]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            dfs(m)


def test_no_private_name_crosses_a_module():
    crossing = [
        f"{m} imports {d}.{name}"
        for m in FILES
        for d, name in _imports(m)
        if d != m and (name or d.rsplit(".", 1)[-1]).startswith("_") and not d.endswith("__main__")
    ]
    assert not crossing, crossing


def test_one_home_per_name():
    """A module's ``__all__`` lists only names it defines (package faces excepted), and every
    ``from arbg.x import name`` takes the name from the module that defines it (or a face)."""
    facades = [
        f"{m}.__all__ lists {n}, defined elsewhere"
        for m in FILES
        if m not in PACKAGES
        for n in _all(m)
        if n not in _defined(m)
    ]
    borrowed = [
        f"{m} takes {name} from {d}, which does not define it"
        for m in FILES
        for d, name in _imports(m)
        if name and d in FILES and d not in PACKAGES and name not in _defined(d)
    ]
    assert not facades and not borrowed, facades + borrowed


def test_faces_reexport_their_own_package():
    for pkg in PACKAGES - {"arbg.cli"}:  # the CLI's __init__ is its main module, not a face
        for d, _ in _imports(pkg, top_level_only=True):
            assert d.startswith(pkg + ".") or d == pkg, f"{pkg} face imports {d}"


@pytest.mark.parametrize("package", sorted(NO_TORCH | NO_OPENMM))
def test_heavy_imports_stay_on_their_side(package):
    banned = "torch" if package in NO_TORCH else "openmm"
    for path in (SRC / package).rglob("*.py"):
        bad = []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                bad += [a.name for a in node.names if a.name.split(".")[0] == banned]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == banned:
                bad.append(node.module)
        assert not bad, f"{path.name} imports {banned} at module level: {bad}"
