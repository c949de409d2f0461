"""Install vreid and its dependencies into the running Python's environment (what `make` runs).

Installing resolves nothing: ``requirements.lock`` pins every distribution ``pip install -e '.[dev]'``
resolved (``--lock`` writes it again). On this 2-core machine a resolving install took 74-95 s, most of
it fetching ~180 wheels one after another (some from PyPI over the network) and unpacking torch's CUDA
build (5.5 GB: torch, triton and the nvidia-* libraries). Pinned, they install without dependency
resolution in four ``pip install --no-deps`` processes side by side (torch and triton; the nvidia-*
and cuda-* libraries; the rest in two halves): ~58 s against 98 s for the same pins one process after
another. Then vreid itself (editable, no deps) and ``pip check``.

Where the pins cannot install (another platform, Python or index: pip finds no such release), it says
so and falls back to the resolving ``pip install -e '.[dev]'``. A lock that no longer satisfies
``pyproject.toml`` is refused before anything is installed (:func:`stale`).

    python tools/install.py           # install (the Makefile's venv python)
    python tools/install.py --lock    # after changing pyproject.toml's dependencies: resolve and pin again
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
HEADER = ("# Every distribution `pip install -e '.[dev]'` resolved for vreid (Linux x86_64, CPython 3.11),\n"
          "# pinned: `make` installs these without resolving (tools/install.py). After changing\n"
          "# pyproject.toml's dependencies: python tools/install.py --lock\n")
# the big wheels, each group in a process of its own; the rest is split in two
GROUPS = [("torch", "torchvision", "triton"), ("nvidia-", "cuda-")]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{normalised name: version}``; a line that is not ``name==version`` is an error naming it."""
    pins: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not m:
            raise SystemExit(f"{path}:{n}: expected 'name==version', got {line!r}")
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def project_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The requirement strings of ``[project].dependencies`` and the ``dev`` extra."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip's own copy of tomli
        from pip._vendor import tomli as tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))


def stale(pins: dict[str, str], requirements: list[str]) -> list[str]:
    """Each requirement of pyproject.toml the lock does not satisfy (missing, or a pinned version
    outside its specifier), as a sentence; empty when the lock is current."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a fresh venv: pip's own copy
        from pip._vendor.packaging.requirements import Requirement

    problems = []
    for text in requirements:
        req = Requirement(text)
        pinned = pins.get(_norm(req.name))
        if pinned is None:
            problems.append(f"{req.name} (pyproject.toml: {text!r}) is not pinned")
        elif req.specifier and not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}=={pinned} does not satisfy pyproject.toml's {text!r}")
    return problems


def split(pins: dict[str, str]) -> list[list[str]]:
    """The pins as ``name==version`` lines in process groups: each of GROUPS, then the rest in two
    alternating halves (empty groups dropped)."""
    groups: list[list[str]] = [[] for _ in GROUPS] + [[], []]
    rest = 0
    for name, version in sorted(pins.items()):
        line = f"{name}=={version}"
        for i, prefixes in enumerate(GROUPS):
            if any(name == p or (p.endswith("-") and name.startswith(p)) for p in prefixes):
                groups[i].append(line)
                break
        else:
            groups[len(GROUPS) + rest % 2].append(line)
            rest += 1
    return [g for g in groups if g]


def _pip(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pip", *args], **kw)


def install_locked(pins: dict[str, str]) -> bool:
    """Every pin, the groups side by side; False (after printing pip's reasons) if any group failed."""
    with tempfile.TemporaryDirectory(prefix="vreid-install-") as tmp:
        procs = []
        for i, group in enumerate(split(pins)):
            req = Path(tmp) / f"group{i}.txt"
            req.write_text("\n".join(group) + "\n")
            log = open(Path(tmp) / f"group{i}.log", "w+")
            procs.append((_pip("install", "--quiet", "--no-compile", "--no-deps", "-r", str(req),
                               stdout=log, stderr=subprocess.STDOUT), log))
        ok = True
        for proc, log in procs:
            if proc.wait() != 0:
                ok = False
                log.seek(0)
                errors = [ln for ln in log.read().splitlines() if "WARNING: Location" not in ln]
                print("\n".join(errors[-8:]), file=sys.stderr)
            log.close()
        return ok


def write_lock() -> None:
    """Resolve ``-e .[dev]`` with pip (nothing is installed) and write the pins, via a temp file."""
    with tempfile.TemporaryDirectory(prefix="vreid-lock-") as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), "-e", f"{REPO}[dev]"], check=True)
        items = json.loads(report.read_text())["install"]
    pins = {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items if _norm(i["metadata"]["name"]) != "vreid"}
    tmp_lock = LOCK.with_name(LOCK.name + ".tmp")
    tmp_lock.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    os.replace(tmp_lock, LOCK)
    print(f"{LOCK}: {len(pins)} pins")


def main(argv: list[str]) -> int:
    if argv == ["--lock"]:
        write_lock()
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    pins = read_lock()
    problems = stale(pins, project_requirements())
    if problems:
        print(f"{LOCK} does not match pyproject.toml: " + "; ".join(problems)
              + ". Run: python tools/install.py --lock", file=sys.stderr)
        return 1
    if not install_locked(pins):
        print(f"tools/install.py: the pins of {LOCK.name} did not install here (above); "
              "resolving instead: pip install -e '.[dev]'", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "-e", f"{REPO}[dev]"], check=True)
        return 0
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "-e", str(REPO)], check=True)
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"tools/install.py: installed from {LOCK.name}, but pip check found:\n{check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
