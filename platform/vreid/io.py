"""Safe file input and output.

Writing: a file is written to a temporary sibling and renamed into place (:func:`atomic_path`); a
*set* of files that belong together (the VehicleNet manifests, an ensemble's outputs) is written into
a temporary sibling folder that is swapped in with one atomic exchange (:func:`atomic_dir`), so a
reader, or a run killed at any moment, sees either the old set or the new set, whole. Written files
get the mode of the file they replace, or the umask's default for a new file (never the 0600 of
``mkstemp``). Temporary siblings carry the writer's process id and are removed by the next writer once
that process is gone.

Reading: :func:`read_text_file` / :func:`read_json_file` turn decode errors into a
:class:`~vreid.errors.VreidError` naming the file and line; :func:`check_output_file` and
:func:`check_output_dir` refuse an unusable ``--out`` before any work starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from vreid.errors import VreidError

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|tmpdir|old)(?:\..*)?$")


# -- reading ----------------------------------------------------------------------------------------
def read_text_file(path: str | os.PathLike, what: str = "file", error: type[VreidError] = VreidError) -> str:
    """The UTF-8 text of ``path``; a missing file or bytes that are not UTF-8 raise ``error`` naming the
    file (and the line of the first bad byte)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                    f"at offset {exc.start})") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", error: type[VreidError] = VreidError) -> Any:
    text = read_text_file(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: {what} is not valid JSON ({exc.msg})") from None


# -- checking an output location before the work ---------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    """``folder`` (an existing folder, or the nearest existing ancestor of one to be created) must take a
    new file: tried for real, since permission bits say nothing for root or on some network mounts."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vreid-write-check.", dir=folder)
    except OSError as exc:
        raise VreidError(f"{flag} {target}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output file path that is a folder, lies under a file, or cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise VreidError(f"{flag} {path}: is a folder; expected a file path")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise VreidError(f"{flag} {path}: {base} is not a folder")
    _check_writable_folder(base, flag, path)
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output folder that is a file, lies under a file, or cannot be written."""
    path = Path(path).expanduser()
    base = _nearest_existing(path)
    if not base.is_dir():
        raise VreidError(f"{flag} {path}: {base} is not a folder")
    _check_writable_folder(base, flag, path)
    return path


# -- modes --------------------------------------------------------------------------------------------
def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it the classic way (and put it back)
    os.umask(mask)
    return mask


def _apply_mode(tmp: Path, target: Path, directory: bool = False) -> None:
    """Give ``tmp`` the mode ``target`` has (if it exists), else the umask's default for a new entry."""
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = (0o777 if directory else 0o666) & ~_umask()
    os.chmod(tmp, mode)


# -- stale temporaries ------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``target`` left by writers that died (killed mid-write).

    Only names of the form written here (``.<name>.<pid>.<8 hex>.tmp|tmpdir|old``) whose process no
    longer runs are removed, so a concurrent live writer is never disturbed.
    """
    target = Path(target)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or m.group("name") != target.name or _pid_alive(int(m.group("pid"))):
            continue
        p = Path(e.path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


_renames = 0


def _after_rename() -> None:
    """Fault injection for the kill tests: ``VREID_KILL_AFTER_RENAME=N`` kills this process with SIGKILL
    right after its N-th rename into place (what a crash at the worst moment looks like)."""
    global _renames
    n = os.environ.get("VREID_KILL_AFTER_RENAME")
    if not n:
        return
    _renames += 1
    if _renames == int(n):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _tmp_name(target: Path, kind: str, suffix: str = "") -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}{suffix}"


# -- writing one file ---------------------------------------------------------------------------------------
def _mkdir_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VreidError(f"{target}: {_nearest_existing(target.parent)} is not a folder") from None
    except OSError as exc:
        raise VreidError(f"{target}: cannot create folder {target.parent} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched, so a reader
    never sees a half-written file. The result keeps ``target``'s mode (or the umask default).
    """
    target = Path(target)
    if target.is_dir():
        raise VreidError(f"{target}: is a folder; expected a file path")
    _mkdir_parent(target)
    clean_stale(target)
    tmp_path = _tmp_name(target, "tmp", suffix)
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise VreidError(f"{target}: cannot write in {target.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        yield tmp_path
        _apply_mode(tmp_path, target)
        os.replace(tmp_path, target)
        _after_rename()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(target)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


# -- writing a set of files -------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if the
    system cannot (or ``VREID_NO_RENAME_EXCHANGE`` is set: tests of the fallback)."""
    if os.environ.get("VREID_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_set(target: str | os.PathLike) -> None:
    """After a writer died between the two renames of the fallback swap (no ``renameat2``), put the old
    set back where readers look; then remove the dead writers' temporaries."""
    target = Path(target)
    if not target.exists():
        olds = [Path(e.path) for e in os.scandir(target.parent) if e.is_dir() and (m := _TMP_RE.match(e.name))
                and m.group("name") == target.name and e.name.endswith(".old")
                and not _pid_alive(int(m.group("pid")))] if target.parent.is_dir() else []
        if olds:
            os.rename(max(olds, key=lambda p: p.stat().st_mtime), target)
    clean_stale(target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, known: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder of ``target``; on success swap it in for ``target``.

    The swap is one atomic exchange where the system has one (Linux), else two renames (old set moved
    aside, new set moved in; :func:`recover_set` at the next start puts the old set back if the writer
    died between them). ``known``: the entry names this command writes; an existing ``target`` holding
    anything else is refused rather than replaced (it is not ours to delete).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise VreidError(f"{target}: is not a folder")
    _mkdir_parent(target)
    recover_set(target)
    if known is not None and target.is_dir():
        foreign = sorted(set(os.listdir(target)) - set(known))
        if foreign:
            raise VreidError(f"{target}: the folder holds {foreign[:5]}, which this command does not write; "
                             f"give a new or empty output folder (it is replaced as a whole)")
    tmp = _tmp_name(target, "tmpdir")
    try:
        tmp.mkdir()
    except OSError as exc:
        raise VreidError(f"{target}: cannot write in {target.parent} ({exc.strerror or exc})") from None
    try:
        yield tmp
        _apply_mode(tmp, target, directory=True)
        if target.exists():
            if _exchange(tmp, target):
                _after_rename()
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the old set
            else:
                old = tmp.with_name(tmp.name[: -len("tmpdir")] + "old")
                os.rename(target, old)
                _after_rename()
                os.rename(tmp, target)
                _after_rename()
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _after_rename()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
