"""The package's shape: layers that import downward only, and no import circle.

LAYERS is the one declaration of the layering (README "Layout of the code" describes it):
a module may import modules of its own layer or of lower ones. Every import counts,
function-local ones included (they must not hide a circle); imports only for type checking
(`if TYPE_CHECKING:`) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prism4m

PACKAGE = Path(prism4m.__file__).parent

# Bottom to top. A module belongs to the first entry that is itself or one of its parents.
LAYERS: list[tuple[str, ...]] = [
    ("prism4m", "prism4m.errors", "prism4m.contract", "prism4m.demo"),  # the dataset contract
    ("prism4m.labelers",),        # what each labeler computes
    ("prism4m.modality",),        # how a label member is decoded, cropped, normalised, serialized
    ("prism4m.tokenizers",),      # tokenizer models
    ("prism4m.pipeline",),        # the stages and the Ray runtime they share
    ("prism4m.trainer",),         # the 4M trainer
    ("prism4m.report",),          # status, report, estimates
    ("prism4m.describe", "prism4m.jobs"),  # what commands print; the job runner
    ("prism4m.api",),             # the façade: one function per command
    ("prism4m.cli",),             # the command line
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports a module; `from mod import name` imports mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in files.items()}


def test_every_import_points_down_or_sideways():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, deps in sorted(import_graph().items()) for b in sorted(deps)
              # a package's face may hand on names of the modules below it
              if layer_of(b) > layer_of(a) and not (b.startswith(a + ".") and a != "prism4m")]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    # Package faces (__init__) re-export their own modules: an edge into a package's own
    # submodule is not a dependency of the package on something else.
    graph = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in graph.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
