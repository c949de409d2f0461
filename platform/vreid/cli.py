"""The ``vreid`` command.

Each area of the library registers its own sub-commands (``register(subparsers)`` in its ``cli``
module); heavy imports (torch, ray, mlflow) happen inside the handlers so ``vreid --help`` is fast.
Config is read here, at the edge, and turned into plain arguments for library functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys


# Modules that define ``register(subparsers)``; order is the order in ``vreid --help``.
_COMMAND_MODULES = [
    "vreid.data.cli",
    "vreid.distributed.train_cli",
    "vreid.evaluate.cli",
    "vreid.distributed.cli",
    "vreid.ensemble.cli",
    "vreid.report_cli",
    "vreid.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vreid",
        description="Vehicle re-identification experiments on Ray: data, training, grids, ensembles.",
    )
    from vreid import __version__

    parser.add_argument("--version", action="version", version=f"vreid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (a :class:`VreidError`, also when raised inside a Ray worker) prints one
    ``vreid: error: ...`` line and exits 2; any other failure prints one line naming a log file that holds
    the full traceback and exits 1. Neither prints a traceback on the terminal."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt as exc:
        print(f"vreid: interrupted: {exc}" if str(exc) else "vreid: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every failure is turned into one line
        return _report(exc, argv)
    return int(result or 0)


def _report(exc: BaseException, argv: list[str] | None) -> int:
    from vreid.errors import find_user_error, one_line

    user = find_user_error(exc)
    if user is not None and user is exc:
        print(f"vreid: error: {one_line(str(user))}", file=sys.stderr)
        return 2
    log = _write_log(exc, argv)
    where = f" (full trace: {log})" if log else ""
    if user is not None:  # bad input found inside Ray: its message, not Ray's wrapping
        text = str(getattr(user, "cause", None) or user)
        if _is_ray_wrapped(user):
            text = _last_line(text)
        print(f"vreid: error: {one_line(text)}{where}", file=sys.stderr)
        return 2
    print(f"vreid: error: {type(exc).__name__}: {_last_line(str(exc)) or '(no message)'}{where}", file=sys.stderr)
    return 1


def _is_ray_wrapped(exc: BaseException) -> bool:
    return any(c.__name__ == "RayTaskError" for c in type(exc).__mro__)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _write_log(exc: BaseException, argv: list[str] | None) -> str | None:
    """The full traceback (with any Ray worker trace in the exception text) in ``$VREID_LOG_DIR`` (default
    ``~/.cache/vreid/logs``, else the temp folder); returns its path."""
    import datetime
    import os
    import tempfile
    import traceback
    from pathlib import Path

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (f"vreid {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    candidates = [os.environ.get("VREID_LOG_DIR"), str(Path.home() / ".cache" / "vreid" / "logs"),
                  os.path.join(tempfile.gettempdir(), "vreid-logs")]
    for folder in [c for c in candidates if c]:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / f"error-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return None


if __name__ == "__main__":
    sys.exit(main())
