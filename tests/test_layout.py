"""Fast tier: the code's shape. Packages import only downwards (``LAYERS``), no import cycles between
the project's modules (counting imports inside functions too: a lazy import only hides a cycle or
an upward arrow), and the library packages need no Ray."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGES = ("trufor_core", "mantranet_core", "pipeline", "jobs", "noiseprint_lab")
# Lowest first: a module may import its own layer and the layers before it, never a later one.
# pipeline.scan and pipeline.results do not import each other (tested: either order would hold).
LAYERS = ("trufor_core", "mantranet_core", "pipeline.base", "noiseprint_lab", "pipeline.scan", "pipeline.results",
          "pipeline.review", "jobs")


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the layer a module belongs to (None: outside them, e.g. ``pipeline`` itself)."""
    hits = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return hits[-1] if hits else None


def _module_name(path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "noiseprint_lab.training" in graph["jobs.noiseprint_train"]  # the graph sees relative and absolute imports
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # and the check finds a cycle
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_packages_import_only_downwards():
    graph = import_graph()
    assert all(layer_of(m) is not None for m in graph if m != "pipeline"), "a module outside LAYERS"
    assert layer_of("pipeline.results.query") == LAYERS.index("pipeline.results")
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if layer_of(m) is not None and layer_of(d) is not None and layer_of(d) > layer_of(m))
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)
    sideways = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                      if {layer_of(m), layer_of(d)} == {LAYERS.index("pipeline.scan"), LAYERS.index("pipeline.results")})
    assert sideways == [], sideways


def test_library_packages_import_without_ray():
    code = ("import sys, noiseprint_lab.training, noiseprint_lab.metrics, noiseprint_lab.data, noiseprint_lab.cameras, "
            "mantranet_core, mantranet_core.weights; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_generated_reference_docs_are_current():
    """docs/cli.md and docs/schema.md are generated from the parser and the schema (`make docs`)."""
    out = subprocess.run([sys.executable, "-m", "jobs.docs", "--check"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_every_package_says_what_it_owns_and_may_import():
    for pkg in LAYERS:
        readme = REPO / pkg.replace(".", "/") / "README.md"
        assert readme.is_file(), f"{pkg} has no README.md"
        assert "May import" in readme.read_text(), f"{readme}: say what the package may import"
