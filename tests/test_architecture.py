"""The import rules of docs/architecture.md, read from the source: which room may import which, no import cycle
between modules, and no function-level import of the package itself."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "matting"

#: Top-level modules that are command lines: nothing in the package imports them.
COMMAND_LINES = {"train", "evaluate", "infer", "export", "convert_official"}

#: Room -> the rooms it may import (besides itself, ``errors`` and ``utils``), as docs/architecture.md says.
ALLOWED = {
    "errors": set(),
    "utils": set(),
    "upsamplers": set(),
    "models": {"upsamplers"},
    "losses": set(),
    "data": set(),
    "metrics": {"data"},
    "config": {"upsamplers", "models", "losses", "data"},
    "engine": {"upsamplers", "models", "losses", "data", "metrics", "config"},
    "cli": {"upsamplers", "models", "losses", "data", "metrics", "config", "engine"},
}
BASE = {"errors", "utils"}


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their __init__.py)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if len(parts) == 2 and parts[1] in COMMAND_LINES:
        return "cli"
    return parts[1]


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level?)`` for each import of the package in ``module``; imports under
    ``if TYPE_CHECKING:`` (annotations only, never run) are left out."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            else:
                visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                continue
            for name in names:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name.startswith("matting") and name != module:
                    found.append((name, child.lineno, top))

    visit(tree, True)
    return found


def graph(package: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    known = modules(package)
    return {m: imports(m, p, known) for m, p in sorted(known.items())}


def forbidden(g: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    wrong = []
    for module, found in g.items():
        for target, line, _ in found:
            src, dst = room(module), room(target)
            if dst == "cli":
                wrong.append(f"{module}:{line} imports the command line {target}")
            elif src != dst and dst not in BASE and dst not in ALLOWED.get(src, set()):
                wrong.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    return wrong


def cycles(g: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    edges = {module: sorted({t for t, _, _ in found}) for module, found in g.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for module in edges:
        if module not in state:
            walk(module, [module])
    return found


#: The package's own modules that may be imported inside a function, each with the reason.
LAZY = {
    ("matting.upsamplers.reassembly", "matting.upsamplers.reassembly_triton"):
        "imports triton, which is optional and must see TRITON_INTERPRET as set when the kernels first run",
}


def function_level(g: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    return [f"{m}:{line} imports {t}" for m, found in g.items() for t, line, top in found
            if not top and (m, t) not in LAZY]


def test_rooms_import_only_what_the_architecture_allows():
    wrong = forbidden(graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "\n".join(found)


def test_the_package_imports_itself_at_module_level():
    local = function_level(graph())
    assert not local, "\n".join(local)


def test_the_checks_fail_on_a_package_that_breaks_the_rules(tmp_path):
    """A made-up package with the old data/ loop, a model importing the trainer and a lazy import."""
    files = {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/release.py": "def f():\n    from matting.data.compose_test import compose\n",
        "data/compose_test.py": "from matting.data.release import f\nfrom matting.errors import E\n",
        "models/__init__.py": "from .build import build\n",
        "models/build.py": "from typing import TYPE_CHECKING\nfrom matting.engine import trainer\n"
                           "if TYPE_CHECKING:\n    from matting.config import C\n",
        "engine/__init__.py": "",
        "engine/trainer.py": "from matting.train import main\n",
        "config.py": "",
        "train.py": "",
    }
    for name, text in files.items():
        (tmp_path / "matting" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "matting" / name).write_text(text)
    g = graph(tmp_path / "matting")
    assert forbidden(g) == ["matting.engine.trainer:1 imports the command line matting.train",
                            "matting.models.build:2 (models) imports matting.engine.trainer (engine)"]
    assert cycles(g) == ["matting.data.compose_test -> matting.data.release -> matting.data.compose_test"]
    assert function_level(g) == ["matting.data.release:2 imports matting.data.compose_test"]
