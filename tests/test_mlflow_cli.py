"""Small conventions of the command and the package: --version, python -m vreid, the lazy entry points,
and `vreid compare` refusing a root without a database instead of creating an empty one."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from conftest import REPO


def test_version_flag_and_python_dash_m(capsys):
    import pytest

    import vreid
    from vreid.cli import main

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert vreid.__version__ == version
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"vreid {version}"
    out = subprocess.run([sys.executable, "-m", "vreid", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"vreid {version}"


def test_import_vreid_exposes_documented_entry_points_lazily():
    code = ("import sys, vreid; heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; "
            "print(','.join(heavy) or 'none'); f = vreid.load_checkpoint; print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none", "vreid.train.checkpoint"]
    import vreid

    for name in vreid.__all__:
        if name == "__version__":
            continue
        obj = getattr(vreid, name)
        assert callable(obj) and (obj.__doc__ or "").strip(), name
        assert name in vreid.__doc__, f"{name} is not listed in vreid's docstring"


def test_compare_with_a_wrong_root_creates_nothing(tmp_path, monkeypatch, capsys):
    from vreid.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "no_such_root"
    assert main(["compare", "demo", "--root", str(root)]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not root.exists()
    root.mkdir()
    assert main(["compare", "demo", "--root", str(root)]) == 2
    assert list(root.iterdir()) == []
