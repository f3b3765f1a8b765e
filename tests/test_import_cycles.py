"""No two modules of the package import each other (scripts/import_cycles.py reads the imports with ast)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("import_cycles", REPO / "scripts" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_in_the_package():
    script = _script()
    graph = script.import_graph(REPO / "src")
    assert "inference_eval.config" in graph and graph["inference_eval.report.provenance"]
    assert script.cycles(graph) == []


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    pkg = tmp_path / "inference_eval"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from inference_eval.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from inference_eval import a\n    return a\n")
    script = _script()
    graph = script.import_graph(tmp_path)
    assert graph["inference_eval.a"] == {"inference_eval.b": "top"}
    assert graph["inference_eval.b"]["inference_eval.a"] == "lazy"
    assert script.cycles(graph) == [["inference_eval.a", "inference_eval.b"]]
    assert script.cycles(graph, only_top=True) == []
