"""The floors of the house (docs/architecture.md), drawn from the source with `ast`: every
import, at module level or inside a function, relative ones resolved, between the modules of one
package. Imports must point down a floor or stay on theirs; nothing imports in a circle; a job
(a module run with `python -m`) never imports another job.

`import_graph(package)` works for any top-level package of the repository, so the same checks can
be added for service/ (and a contract package) with their own floors.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Training, from the ground up (longest matching prefix wins). A job sits above every floor.
TRAINING_FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("data", ("training.data",)),
    ("nets", ("training.nets",)),
    ("config and evidence", ("training.config", "training.evidence")),
    ("evaluation", ("training.evaluation", "training.cli")),
    ("audit", ("training.audit",)),
    ("fit", ("training.fit",)),
]
# The commands (`python -m ...`): each reads top to bottom and imports no other job.
TRAINING_JOBS = {
    "training.train_target",
    "training.train_detrigger",
    "training.reproduce",
    "training.strip_calibrate",
    "training.swap_detrigger",
    "training.suite",
    "training.detection_report",
    "training.detection_tables",
    "training.audit.__main__",
    "training.audit.control",
    "training.audit.joint",
    "training.audit.report",
    "training.audit.tune",
}
LOWER_FLOORS = (
    "training.data",
    "training.nets",
    "training.config",
    "training.evidence",
    "training.cli",
    "training.evaluation",
    "training.fit",
)


def module_files(package: str, root: Path = REPO) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of `package` (a folder of `root`)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> list[str]:
    """Every module name `module` imports, anywhere in its source, as written or resolved from a
    relative import; `from a import b` yields both `a` and `a.b` (b may be a module)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """{module: the modules of `package` it imports}. An import of a module's attribute counts
    as an import of that module; a package's __init__ counts only when imported itself."""
    files = module_files(package, root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in _imported_names(module, path):
            while name and name not in files and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in files and name != module:
                targets.add(name)
        graph[module] = targets
    # `from training.data import datasets` also yields `training.data`; drop a package when one
    # of its own modules was the target of the same import.
    for module, targets in graph.items():
        graph[module] = {
            t
            for t in targets
            if not (files[t].name == "__init__.py" and any(u.startswith(t + ".") for u in targets))
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def entry_points(package: str) -> set[str]:
    """Modules run with `python -m`: a __main__.py, or a module with an `if __name__ ==
    "__main__":` block."""
    out = set()
    for module, path in module_files(package).items():
        tree = ast.parse(path.read_text(), str(path))
        runs = any(
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            for node in tree.body
        )
        if path.name == "__main__.py" or runs:
            out.add(module)
    return out


def floor_of(module: str, floors: list[tuple[str, tuple[str, ...]]], jobs: set[str]) -> int:
    """The module's floor, counted from 0 at the ground; jobs are above every floor, and a
    package's own __init__ sits on its floor."""
    if module in jobs:
        return len(floors)
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(floors):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is on no floor: add it to a floor or to the jobs"
    return rank


def test_no_import_cycles_in_training() -> None:
    assert cycles(import_graph("training")) == []


def test_the_jobs_are_the_training_entry_points() -> None:
    assert entry_points("training") == TRAINING_JOBS


def test_no_training_job_imports_another_job() -> None:
    graph = import_graph("training")
    wrong = {job: sorted(graph[job] & TRAINING_JOBS) for job in TRAINING_JOBS}
    assert {job: found for job, found in wrong.items() if found} == {}


def test_the_lower_floors_import_no_job() -> None:
    graph = import_graph("training")
    lower = [m for m in graph if m.startswith(LOWER_FLOORS) and m not in TRAINING_JOBS]
    assert lower  # the floors exist
    wrong = {m: sorted(graph[m] & TRAINING_JOBS) for m in lower}
    assert {m: found for m, found in wrong.items() if found} == {}


def test_training_imports_point_down_or_stay_on_their_floor() -> None:
    graph = import_graph("training")
    up = []
    for module, targets in graph.items():
        if module == "training":
            continue
        here = floor_of(module, TRAINING_FLOORS, TRAINING_JOBS)
        for target in targets:
            if target != "training" and floor_of(target, TRAINING_FLOORS, TRAINING_JOBS) > here:
                up.append(f"{module} -> {target}")
    assert sorted(up) == []


def test_the_graph_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom . import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    graph = import_graph("pkg", tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a", "pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
