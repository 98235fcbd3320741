"""Package layering, read from the source with ``ast``: the data package reads and validates data and never imports
the model or scoring code, and one scorer owns scoring (no second image scorer, threshold reader, error collector or
map writer in the package)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_scrd"


def _modules(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(path: Path, tree: ast.AST) -> set[str]:
    """Every module ``path`` imports, at any depth (also inside functions), relative imports made absolute."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_data_imports_no_model_or_scoring_code():
    forbidden = ("monai_scrd.engines", "monai_scrd.scoring", "monai_scrd.networks", "monai_scrd.registry",
                 "monai_scrd.label", "monai_scrd.losses")
    modules = list(_modules(PACKAGE / "data"))
    assert len(modules) >= 8
    for path, tree in modules:
        bad = sorted(n for n in _imported(path, tree) if n.startswith(forbidden))
        assert not bad, f"{path.name} imports {bad}"


def test_layer_check_sees_relative_and_local_imports(tmp_path):
    """The import check itself: relative and function-level imports are resolved to package names."""
    src = "from ..scoring import Scorer\n\ndef f():\n    import monai_scrd.networks.scrd\n    from .errors import DataError\n"
    names = _imported(PACKAGE / "data" / "x.py", ast.parse(src))
    assert {"monai_scrd.scoring.Scorer", "monai_scrd.networks.scrd", "monai_scrd.data.errors"} <= names


def test_one_scorer_one_threshold_reader_one_error_collector_one_map_writer():
    defined: dict[str, list[str]] = {}
    image_score_callers = set()
    for path, tree in _modules(PACKAGE):
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(rel)
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if name == "image_score":
                    image_score_callers.add(rel)
    # the scorer applies the scoring (in PyTorch, or exported with the network by the compiled backends), the fitting
    # module fits it on normals (calibration, choice, threshold): nothing else reduces maps to scores
    assert image_score_callers == {os_path("scoring/scorer.py"), os_path("scoring/backends.py"),
                                   os_path("scoring/fitting.py")}, image_score_callers
    for name, module in (("Scorer", "scorer"), ("read_threshold", "scorer"), ("ErrorCollector", "outputs"),
                         ("save_map", "outputs"), ("ScoreWriter", "outputs"), ("write_csv", "io"), ("write_json", "io"),
                         ("Preprocessor", "dataset")):
        assert defined.get(name) == [os_path(f"scoring/{module}.py")], (name, defined.get(name))
    gone = ("SCRDScorer", "score_files", "score_volume", "score_slices", "load_threshold", "save_map_nifti", "safe_load",
            "FileErrors", "ErrorReport", "write_errors_csv", "write_scores_csv", "finite", "MaxIterationsHandler",
            "epochs_for", "find_mlflow_handler", "MLflowExtrasHandler", "EvalCollate", "SafeDataset")
    assert not {n: defined[n] for n in gone if n in defined}
    assert [p for p in defined.get("load_datalist", [])] == [os_path("data/datalist.py")]


def os_path(rel: str) -> str:
    return str(Path(rel))
