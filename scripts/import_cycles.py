"""List import cycles among the modules of ``src/inference_eval`` (read with ``ast``, nothing imported).

Every ``import`` / ``from ... import`` of a package module is an edge, marked ``top`` (runs when the module
is imported) or ``lazy`` (inside a function: runs when the function is called). A cycle of top edges
breaks at import time; a cycle through lazy edges still ties two modules to each other. Prints each
strongly connected component of the graph with its edges; exit status 1 when there is one.

    python scripts/import_cycles.py [src]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "inference_eval"


def modules(src: Path) -> dict[str, Path]:
    out = {}
    for f in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph(src: Path) -> dict[str, dict[str, str]]:
    """``{module: {imported module: 'top' | 'lazy'}}`` (a module imported both ways counts as top)."""
    mods = modules(src)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, str]] = {m: {} for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(fn)}
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.startswith(PACKAGE) else None
                if target and target != mod and graph[mod].get(target) != "top":
                    graph[mod][target] = "lazy" if id(node) in lazy else "top"
    return graph


def cycles(graph: dict[str, dict[str, str]], only_top: bool = False) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over top edges or all edges."""
    edges = {m: [t for t, kind in e.items() if kind == "top" or not only_top] for m, e in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src"
    graph = import_graph(src)
    found = cycles(graph)
    for comp in found:
        print("cycle:", ", ".join(comp))
        for a in comp:
            for b, kind in graph[a].items():
                if b in comp:
                    print(f"  {a} -> {b} ({kind})")
    if not found:
        print(f"no import cycles among {len(graph)} modules of {PACKAGE}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
