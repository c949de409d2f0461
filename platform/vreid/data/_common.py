"""Shared parsing helpers of the dataset readers: list files, gb2312 XML, ids, cameras, errors.

Every helper raises :class:`DataFormatError` naming the file (and line, where there is one) and what
was expected, so a bad download is reported before anything is written.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

import pandas as pd

from vreid.data.schema import COLUMNS, normalize_manifest
from vreid.errors import DataFormatError

_DECL_RE = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9_.:-]+)[\"'][^>]*\?>", re.S)
_CAMERA_RE = re.compile(r"^[cC]?0*(\d+)$")


def require_root(root: str | os.PathLike, fmt: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFormatError(f"{root}: {fmt} root folder not found (expected the unpacked dataset folder)")
    return root.resolve()


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFormatError(f"{path}: missing {what}")
    return path


def read_lines(path: Path, what: str, allow_empty: bool = False) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(1-based line number, stripped text)``.

    A file with no non-blank line is refused (an empty list would silently give a manifest of 0 rows)
    unless ``allow_empty``."""
    require_file(path, what)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: {what} is not UTF-8/ASCII text") from exc
    lines = [(i, s.strip()) for i, s in enumerate(text.splitlines(), start=1) if s.strip()]
    if not lines and not allow_empty:
        raise DataFormatError(f"{path}: {what} is empty (expected at least one entry)")
    return lines


def check_consistent(seen: dict, key, value, path: Path, line: int, what: str) -> None:
    """Record ``key -> (value, line)``; a later line giving the same key a different value is refused
    (the later line would otherwise silently win)."""
    if key in seen:
        old, first = seen[key]
        if old != value:
            raise DataFormatError(f"{path}:{line}: {what} {key!r} = {value!r} contradicts line {first} ({old!r})")
        return
    seen[key] = (value, line)


def read_name_list(path: Path, what: str) -> list[tuple[int, str]]:
    """A one-name-a-line list (``name_train.txt``): names must be unique base names."""
    out = []
    seen: dict[str, int] = {}
    for line, text in read_lines(path, what):
        if len(text.split()) != 1:
            raise DataFormatError(f"{path}:{line}: expected one image name, got {text!r}")
        if text in seen:
            raise DataFormatError(f"{path}:{line}: duplicate image name {text!r} (first on line {seen[text]})")
        seen[text] = line
        out.append((line, text))
    return out


def check_unique(items: Iterable[tuple[int, str]], path: Path) -> None:
    seen: dict[str, int] = {}
    for line, name in items:
        if name in seen:
            raise DataFormatError(f"{path}:{line}: duplicate image name {name!r} (first on line {seen[name]})")
        seen[name] = line


def parse_int(token: str, what: str, where: str) -> int:
    try:
        return int(token)
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: {what} {token!r} is not an integer") from None


def parse_camera(token: str, where: str) -> int:
    """``c012`` / ``C12`` / ``12`` -> 12."""
    m = _CAMERA_RE.match(str(token).strip())
    if not m:
        raise DataFormatError(f"{where}: camera {token!r} does not parse (expected like 'c012' or '12')")
    return int(m.group(1))


def existing_files(folder: Path) -> set[str]:
    """Names of the files in ``folder`` (one ``listdir`` instead of one ``stat`` per image)."""
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except FileNotFoundError:
        return set()


def require_image(folder_files: set[str], name: str, folder: Path, list_path: Path, line: int) -> Path:
    if name not in folder_files:
        raise DataFormatError(f"{list_path}:{line}: image {name!r} is listed but not on disk in {folder}")
    return folder / name


def parse_xml(path: Path, what: str) -> tuple[ET.Element, str]:
    """Parse an XML file whose declaration may name a multi-byte encoding such as gb2312.

    Python's expat refuses multi-byte declared encodings, so the bytes are decoded here with the
    declared codec (gb2312 via its superset gb18030, which also accepts the odd byte the releases
    have outside gb2312) and the declaration is dropped before parsing the text.
    Returns the root element and the decoded text (for line look-ups in error messages).
    """
    require_file(path, what)
    raw = path.read_bytes()
    m = _DECL_RE.match(raw)
    encoding = m.group(1).decode("ascii").lower() if m else "utf-8"
    if encoding in ("gb2312", "gbk", "gb_2312-80"):
        encoding = "gb18030"
    body = raw[m.end():] if m else raw
    try:
        text = body.decode(encoding)
    except LookupError:
        raise DataFormatError(f"{path}:1: unknown XML encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = raw[: (m.end() if m else 0) + exc.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: bytes do not decode as declared encoding {encoding!r}") from exc
    try:
        root = ET.fromstring(text.lstrip("\ufeff"))
    except ET.ParseError as exc:
        offset = raw[: m.end()].count(b"\n") if m else 0
        line = exc.position[0] + offset
        raise DataFormatError(f"{path}:{line}: {what} is not well-formed XML ({exc})") from None
    return root, ("\n" * (raw[: m.end()].count(b"\n") if m else 0)) + text


def line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of ``needle`` in ``text`` (1 when absent)."""
    pos = text.find(needle)
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


def xml_items(root: ET.Element, text: str) -> list[tuple[ET.Element, int]]:
    """``<Item>`` elements in document order with their 1-based line numbers.

    ElementTree keeps no line numbers, so the ``<Item`` tags are located in the text in one pass
    (a per-item ``find`` would be quadratic on VeRi-776's 37,778 items).
    """
    items = list(root.iter("Item"))
    starts = [m.start() for m in re.finditer(r"<Item[\s/>]", text)]
    if len(starts) != len(items):  # e.g. an "<Item" inside a comment: fall back to searching by name
        return [(it, line_of(text, f'"{it.get("imageName")}"')) for it in items]
    lines, line, last = [], 1, 0
    for pos in starts:
        line += text.count("\n", last, pos)
        last = pos
        lines.append(line)
    return list(zip(items, lines))


def frame(records: list[dict], attrs: dict | None = None) -> pd.DataFrame:
    """Records (dicts with some of the manifest columns) -> a normalized manifest frame."""
    defaults = {"timestamp": float("nan"), "track": None, "bbox": None, "viewpoint": None, "color": None,
                "type": None, "model": None, "label": -1, "camera": -1}
    if records:
        df = pd.DataFrame.from_records(records)
    else:
        df = pd.DataFrame({c: [] for c in COLUMNS})
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = defaults.get(col)
    df = normalize_manifest(df[list(COLUMNS)])
    if attrs:
        df.attrs["vreid"] = dict(attrs)
    return df
