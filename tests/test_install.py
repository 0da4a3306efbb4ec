"""The install paths agree: `make lab` / `make test` (Makefile) and `conda env create -f
environment.yml` pin the same torch and install the same extras of pyproject.toml, so a
workshop room on conda gets the versions the suite was run with."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"the Makefile sets no {name}"
    return match[1]


def environment_pip_lines() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:].strip() for line in lines[start + 1:] if line.strip().startswith("- ")]


def test_environment_yml_pins_the_makefiles_torch():
    pins = [p for p in environment_pip_lines() if p.startswith("torch")]
    assert pins == [makefile_variable("TORCH")]


def test_environment_yml_installs_the_lab_extras_make_lab_installs():
    makefile = (ROOT / "Makefile").read_text()
    lab_target = re.search(r"^\$\(VENV\)/\.lab:.*\n((?:\t.*\n)+)", makefile, re.M)[1]
    make_extras = set(re.search(r'-e "\.\[([^\]]+)\]"', lab_target)[1].split(","))
    env_install = next(p for p in environment_pip_lines() if p.startswith("-e ."))
    env_extras = set(re.search(r"\[([^\]]+)\]", env_install)[1].split(","))
    assert env_extras == make_extras
    # ... and pyproject.toml defines them, torch's range admitting the pinned version
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert env_extras <= set(project["optional-dependencies"])
    torch_range = next(d for d in project["dependencies"] if d.startswith("torch"))
    pinned = tuple(int(x) for x in makefile_variable("TORCH").split("==")[1].split(".")[:2])
    low = tuple(int(x) for x in re.search(r">=([\d.]+)", torch_range)[1].split(".")[:2])
    high = tuple(int(x) for x in re.search(r"<([\d.]+)", torch_range)[1].split(".")[:2])
    assert low <= pinned < high, (torch_range, pinned)
