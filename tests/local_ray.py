"""Helpers for tests that run README's shell lines or start extra Ray nodes of their own.

* :func:`readme_block` / :func:`shell_commands`: the code block after a README marker comment, as one
  command per entry (backslash continuations joined, comments dropped), so a test runs README's text.
* :func:`free_port_flags`: the port flags a second `ray start` needs on a shared machine (any default
  port may already be held by another Ray instance).
* :func:`kill_temp_dir`: stop only the processes of one Ray instance (their command lines name its temp
  dir); never `ray stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from conftest import REPO


def readme_block(marker: str, readme: Path = REPO / "README.md") -> str:
    """The first ``` block after the first line containing ``marker``."""
    text = readme.read_text()
    at = text.find(marker)
    assert at >= 0, f"README has no line with {marker!r}"
    found = re.search(r"```[^\n]*\n(.*?)```", text[at:], re.S)
    assert found, f"no code block after {marker!r}"
    return found.group(1)


def shell_commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", "", block)
    out = []
    for line in joined.splitlines():
        line = _strip_comment(line).strip()
        if line:
            out.append(line)
    return out


def _strip_comment(line: str) -> str:
    """``line`` without a shell comment (an unquoted ``#`` that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def exports(commands: list[str]) -> dict[str, str]:
    out = {}
    for c in commands:
        m = re.fullmatch(r"export (\w+)=(\S+)", c)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_flags(head: bool) -> list[str]:
    flags = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    if head:
        # the Ray client server's default 10001 too: two heads on one machine would share it
        flags += [f"--port={free_port()}", f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    return flags


def pids_of(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (read from /proc; no psutil needed)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd:
            found.append(int(entry.name))
    return found


def kill_temp_dir(tmp: str, sig: int = signal.SIGKILL) -> None:
    """Signal every process whose command line names `tmp`, and their children (Ray's workers rename
    themselves to `ray::...` and no longer name the temp dir)."""
    import psutil

    for _ in range(3):
        pids = set(pids_of(tmp))
        for pid in list(pids):
            try:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
