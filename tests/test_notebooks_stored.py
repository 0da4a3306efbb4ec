"""The notebooks are stored as CI executes them: tutorials and their worked solutions
(``solutions/``) side by side, one solution notebook per tutorial, all without outputs."""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_every_tutorial_has_its_solutions():
    assert TUTORIALS, "no tutorial notebooks found"
    assert [p.name for p in SOLUTIONS] == [p.name for p in TUTORIALS]


@pytest.mark.parametrize("path", TUTORIALS + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_read_fast_mode_and_stand_alone(path):
    notebook = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert 'os.environ.get("OFFSETLAB_FAST") == "1"' in code, f"{path.name} ignores OFFSETLAB_FAST"
    assert "notebooks" not in code, f"{path.name} must not import from or read the tutorials"
    assert "assert " in code, f"{path.name} checks none of its answers"
