"""The package layering STYLE asks for: lower layers never import higher ones. Read from the source
(every import statement, also the ones inside functions), so a lazy import cannot hide a cycle."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "platform" / "vreid"

# layer -> the vreid packages it must not import
FORBIDDEN = {
    "data": ("vreid.models", "vreid.train", "vreid.evaluate", "vreid.ensemble", "vreid.distributed", "vreid.tracking"),
    "models": ("vreid.train", "vreid.evaluate", "vreid.ensemble", "vreid.distributed", "vreid.tracking"),
    "evaluate": ("vreid.train", "vreid.ensemble", "vreid.distributed"),
    "train": ("vreid.distributed", "vreid.ensemble", "vreid.tracking"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer):
    bad = []
    for f in sorted((PKG / layer).rglob("*.py")):
        if f.name == "cli.py":  # a package's command module is the edge: it may call any layer
            continue
        for mod in imported_modules(f):
            if any(mod == p or mod.startswith(p + ".") for p in FORBIDDEN[layer]):
                bad.append(f"{f.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from vreid.distributed.run import train_run\n    import vreid.tracking\n")
    assert {"vreid.distributed.run", "vreid.tracking"} <= imported_modules(f)
