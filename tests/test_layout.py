"""The package's layout: stage folders that import only from the stages below them, a short top level, and the
public API importable from `bertclf` itself."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bertclf"

# the data's way, bottom to top; a stage imports from lower ranks (and itself) only
RANK = {"errors": 0, "cpu": 0, "io": 1, "data": 2, "rundir": 3, "models": 4, "train": 5, "inference": 6,
        "serve": 7, "export": 7, "report": 7, "distill": 8, "audit": 8, "tune": 8, "cli": 9, "__main__": 10}


def bertclf_imports(path: Path):
    """(line, first name under bertclf) of every `bertclf.*` import in `path`, lazy ones inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "relative import"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bertclf":
            parts = node.module.split(".")
            for name in ([parts[1]] if len(parts) > 1 else [a.name for a in node.names]):
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bertclf."):
                    yield node.lineno, a.name.split(".")[1]


def upward_imports(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        stage = path.relative_to(package).with_suffix("").parts[0]
        if stage == "__init__":  # the public API, re-exported lazily from the stages
            continue
        for line, name in bertclf_imports(path):
            if name == "__version__":
                continue
            if name not in RANK or stage not in RANK:
                found.append(f"{path.relative_to(package)}:{line}: {name!r} is no stage of the layout (add it to RANK)")
            elif name != stage and RANK[name] >= RANK[stage] and RANK[name] > 0:
                found.append(f"{path.relative_to(package)}:{line}: {stage} (rank {RANK[stage]}) imports "
                             f"{name} (rank {RANK[name]})")
    return found


def test_every_import_points_down_the_stages():
    assert upward_imports(PACKAGE) == []


def test_the_check_finds_an_upward_import(tmp_path):
    """The check itself can fail: a data module that reaches up into train is reported with its line."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tokens.py").write_text("import numpy\n\ndef f():\n    from bertclf.train.loop import train\n")
    (tmp_path / "io").mkdir()
    (tmp_path / "io" / "rows.py").write_text("from bertclf.io import files\nfrom bertclf.errors import UserError\n")
    assert upward_imports(tmp_path) == ["data/tokens.py:4: data (rank 2) imports train (rank 5)"]


def test_a_short_top_level():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    stages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert set(stages) == {name for name in RANK if name not in ("errors", "cpu", "cli", "__main__")}


@pytest.mark.parametrize("name", ["Classifier", "TrainConfig", "train", "__version__"])
def test_the_public_api_is_importable_from_the_top(name):
    import bertclf

    assert name in bertclf.__all__ and getattr(bertclf, name) is not None
