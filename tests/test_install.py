"""tools/install.py: the lock `make` installs from satisfies pyproject.toml, and a stale or malformed
lock is named before anything is installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("vreid_install", REPO / "tools" / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


def test_the_committed_lock_satisfies_pyproject():
    """Every requirement of pyproject.toml (dependencies and the dev extra) is pinned at a version its
    specifier admits (a dependency added to pyproject.toml without re-locking fails here)."""
    pins = install.read_lock()
    requirements = install.project_requirements()
    assert len(requirements) == 23 and install.stale(pins, requirements) == []
    assert pins["ray"].startswith("2.60") and pins["torch"] == "2.14.1"


def test_stale_lock_is_named_per_requirement():
    pins = {"ray": "2.60.0", "torch": "2.14.1", "pandas": "1.5.3"}
    problems = install.stale(pins, ["ray[train,tune]>=2.60", "Torch", "pandas>=2.0", "timm>=1.0"])
    assert problems == ["pandas==1.5.3 does not satisfy pyproject.toml's 'pandas>=2.0'",
                        "timm (pyproject.toml: 'timm>=1.0') is not pinned"]
    # names compare normalised (PEP 503): scikit_learn is scikit-learn
    assert install.stale({"scikit-learn": "1.5"}, ["scikit_learn"]) == []


def test_malformed_lock_line_is_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nray==2.60.0\ntorch>=2.0\n")
    with pytest.raises(SystemExit, match=r"requirements.lock:3: expected 'name==version', got 'torch>=2.0'"):
        install.read_lock(lock)


def test_groups_cover_every_pin_once_and_keep_the_big_wheels_apart():
    pins = {"torch": "2.14.1", "triton": "3.8.0", "nvidia-cublas": "13", "cuda-bindings": "13", "numpy": "2.4",
            "pandas": "2.3", "ray": "2.60.0", "torchvision": "0.29.1", "torchmetrics": "1.0"}
    groups = install.split(pins)
    lines = [line for g in groups for line in g]
    assert sorted(lines) == sorted(f"{n}=={v}" for n, v in pins.items())
    assert groups[0] == ["torch==2.14.1", "torchvision==0.29.1", "triton==3.8.0"]  # not torchmetrics: a prefix of a name is not a match
    assert groups[1] == ["cuda-bindings==13", "nvidia-cublas==13"]
    assert len(groups) == 4 and abs(len(groups[2]) - len(groups[3])) <= 1


def test_a_stale_lock_is_refused_before_installing(tmp_path):
    """The script, run against a copy of the repo whose pyproject asks for more than the lock pins,
    exits 1 naming the requirement and the command that re-locks; pip is never started."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "install.py").write_text((REPO / "tools" / "install.py").read_text())
    (tmp_path / "requirements.lock").write_text("ray==2.60.0\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["ray>=2.60", "torch"]\n')
    proc = subprocess.run([sys.executable, str(tmp_path / "tools" / "install.py")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "does not match pyproject.toml: torch (pyproject.toml: 'torch') is not pinned" in proc.stderr
    assert "python tools/install.py --lock" in proc.stderr
