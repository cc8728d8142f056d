"""The package layout is the architecture: layers point one way, with no cycles and no private names.

Every module's imports, function-local ones included, are read with `ast` (nothing is imported).
An import of a package counts as an import of its `__init__`, which imports the package's modules.

    LAYERS (low to high; a module may import its own layer's packages and the layers below)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dema_lab"

# The one declaration of the layer order; docs/architecture.md draws it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("common",),
    ("ssm",),
    ("models",),
    ("envs", "data"),
    ("store",),
    ("analysis",),
    ("evaluation", "training"),
    ("study",),
    ("integrations",),
    ("cli", "dashboard"),
)
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """('dema_lab.store.lock', is_package) for a file under root."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def collect_modules(root: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    return {module_name(p, root)[0]: (p, module_name(p, root)[1]) for p in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in a module, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # `from pkg import module`
                    found.append((sub, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m == PACKAGE or m.startswith(PACKAGE + ".")]


def private_attributes(path: Path, aliases: dict[str, str]) -> list[tuple[str, str, int]]:
    """`module._name` uses, for names bound to a dema_lab module by `import ... as`."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                out.append((aliases[node.value.id], node.attr, node.lineno))
    return out


def module_aliases(path: Path, known: set[str]) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def layer_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def build_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = collect_modules(root, package)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        for target, _, _ in imports_of(name, path, is_package, known):
            while target and target not in known:  # `import dema_lab.x.y` of a name, not a module
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        a = layer_package(src)
        for dst in targets:
            b = layer_package(dst)
            if a is None or b is None or a == b:
                continue
            if LAYER_OF[b] > LAYER_OF[a]:
                bad.append(f"{src} imports {dst} ({a} is below {b})")
    return sorted(bad)


def private_imports(
    root: Path = ROOT, package: str = PACKAGE, extra_dirs=("tests", "dashboards", "benchmarks", "scripts")
):
    """`from module import _name` and `module._name` across modules, in the package and around it."""
    modules = collect_modules(root, package)
    known = set(modules)
    files = [(n, p, pkg) for n, (p, pkg) in modules.items()]
    for d in extra_dirs:
        for p in sorted((root / d).rglob("*.py")) if (root / d).is_dir() else ():
            files.append((f"{d}/{p.name}", p, False))
    bad = []
    for name, path, is_package in files:
        for target, imported, line in imports_of(name, path, is_package, known):
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                bad.append(f"{path.relative_to(root)}:{line} imports {target}.{imported}")
        for target, attr, line in private_attributes(path, module_aliases(path, known)):
            if target != name:
                bad.append(f"{path.relative_to(root)}:{line} uses {target}.{attr}")
    return sorted(bad)


def test_every_package_has_a_layer():
    packages = {layer_package(m) for m in collect_modules(ROOT)} - {None}
    assert packages <= set(LAYER_OF), f"packages without a layer: {sorted(packages - set(LAYER_OF))}"


def test_no_import_cycles():
    cycles = find_cycles(build_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_packages_form_no_cycle():
    pkg_graph: dict[str, set[str]] = {}
    for src, targets in build_graph().items():
        a = layer_package(src)
        for dst in targets:
            b = layer_package(dst)
            if a and b and a != b:
                pkg_graph.setdefault(a, set()).add(b)
    assert not find_cycles(pkg_graph), f"packages import each other: {find_cycles(pkg_graph)}"


def test_no_upward_imports():
    bad = upward_imports(build_graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = private_imports()
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_every_package_says_what_it_owns_and_may_import():
    for name, (path, is_package) in collect_modules(ROOT).items():
        if not is_package:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert len(doc.split()) >= 8, f"{path.relative_to(ROOT)} needs a docstring: what the package owns"
        if name.count(".") == 1:
            assert "import" in doc.lower(), f"{path.relative_to(ROOT)}: say what the package may import"


@pytest.fixture
def tree_with(tmp_path):
    """A copy of the package with extra modules written into it."""
    import shutil

    def make(extra: dict[str, str]) -> Path:
        shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
        for rel, text in extra.items():
            (tmp_path / rel).write_text(text)
        return tmp_path

    return make


def test_the_checks_catch_a_cycle_an_upward_import_and_a_private_name(tree_with):
    root = tree_with(
        {
            # a cycle between two ssm modules
            "dema_lab/ssm/loop_a.py": "from dema_lab.ssm.loop_b import B\nA = 1\n",
            "dema_lab/ssm/loop_b.py": "def f():\n    from dema_lab.ssm import loop_a\nB = 2\n",
            # models reaching up into the trainer, in a function
            "dema_lab/models/upward.py": "def f():\n    from dema_lab.training import trainer\n",
            # a private name taken from another module
            "dema_lab/models/private.py": "from dema_lab.ssm.scan import _hidden\n",
        }
    )
    graph = build_graph(root)
    assert ["dema_lab.ssm.loop_a", "dema_lab.ssm.loop_b"] in find_cycles(graph)
    assert any(b.startswith("dema_lab.models.upward imports dema_lab.training") for b in upward_imports(graph))
    assert any("imports dema_lab.ssm.scan._hidden" in b for b in private_imports(root, extra_dirs=()))
