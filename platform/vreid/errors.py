"""Errors raised for bad user input: the CLI prints their message and exits non-zero."""

from __future__ import annotations


class VreidError(Exception):
    """A user-facing error whose message names the file / line / field and what was expected."""


class DataFormatError(VreidError):
    """An on-disk dataset file is missing or does not parse."""


class ConfigError(VreidError):
    """A YAML config has an unknown, missing or mistyped key."""


class EvaluationInputError(VreidError, ValueError):
    """Arrays given to an evaluation function do not match what it expects."""


class GridInterrupted(KeyboardInterrupt):
    """A grid's driver was interrupted (Ctrl-C, SIGINT) before every trial ended. Ray Tune catches the
    signal, saves the experiment and returns; the grid then stops here instead of selecting from the
    trials that happened to finish. A KeyboardInterrupt: what the user's Ctrl-C asked for; the CLI
    prints its message (how to continue) and exits 130."""


def _children(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception wraps: Python's cause/context, Ray's ``cause`` (RayTaskError), Ray
    Train's ``worker_failures`` / ``controller_failure``, Tune's ``errors``, exception groups."""
    out: list[BaseException] = []
    for attr in ("cause", "controller_failure", "__cause__", "__context__"):
        child = getattr(exc, attr, None)
        if isinstance(child, BaseException):
            out.append(child)
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict):
        out.extend(v for v in failures.values() if isinstance(v, BaseException))
    for attr in ("exceptions", "errors"):
        many = getattr(exc, attr, None)
        if isinstance(many, (list, tuple)):
            out.extend(v for v in many if isinstance(v, BaseException))
    return out


def find_user_error(exc: BaseException, depth: int = 12) -> VreidError | None:
    """The :class:`VreidError` at the root of ``exc`` (e.g. raised inside a Ray worker), or None.

    Ray re-raises a worker's exception as a class deriving from both ``RayTaskError`` and the original
    class, whose text is the whole remote traceback; its ``cause`` is the original exception, whose
    message is what the user needs.
    """
    seen: set[int] = set()
    stack = [(exc, 0)]
    found: VreidError | None = None
    while stack:
        e, d = stack.pop(0)
        if id(e) in seen or d > depth:
            continue
        seen.add(id(e))
        if isinstance(e, VreidError) and not _is_ray_wrapper(e):
            return e
        if isinstance(e, VreidError) and found is None:
            found = e
        stack.extend((c, d + 1) for c in _children(e))
    return found


def _is_ray_wrapper(exc: BaseException) -> bool:
    return any(c.__name__ == "RayTaskError" for c in type(exc).__mro__)


def one_line(text: str) -> str:
    """A message on one line (the CLI prints exactly one ``vreid: error:`` line)."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts) if parts else str(text)
