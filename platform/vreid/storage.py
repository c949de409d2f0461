"""Where Ray keeps experiments and checkpoints: a local folder on one machine, shared storage on many.

``output.storage_path`` is either a local folder or any URI ``pyarrow.fs.FileSystem.from_uri`` opens
(``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``); query options stay at the end of the URI
(``s3://bucket/ray?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible server) and
are kept by :func:`join` and :func:`checkpoint_uri`. Credentials come from the usual environment
(``AWS_ACCESS_KEY_ID`` ...) of every node.

* :func:`check_cluster_storage`: on a cluster of more than one node, a local ``storage_path`` (or a local
  SQLite MLflow store) is refused unless it lies under a shared mount the user names
  (``vreid grid --shared-storage /shared`` or ``$VREID_SHARED_STORAGE``): each node would write
  checkpoints only it can read, and a trial moved to another node could not resume.
* :func:`checkpoint_uri`: the full URI of a checkpoint Ray reports as a path inside its filesystem.
* :func:`local_checkpoint`: a local folder for any checkpoint URI (remote ones are downloaded once into
  a cache folder, whole, then renamed into place), so every loader reads plain files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from vreid.errors import VreidError

SHARED_ENV = "VREID_SHARED_STORAGE"


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str, *parts: str) -> str:
    """``base`` / parts for local paths and URIs alike (a URI's query string stays at the end)."""
    if not is_remote(base):
        return str(Path(str(base).removeprefix("file://"), *parts))
    u = urlsplit(base)
    path = "/".join([u.path.rstrip("/"), *[p.strip("/") for p in parts]])
    return urlunsplit((u.scheme, u.netloc, path, u.query, ""))


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` of a URI."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with its own message
        raise VreidError(f"storage {uri}: cannot open it as a pyarrow filesystem: {exc}") from None


def checkpoint_uri(storage_path: str, path: str) -> str:
    """The URI of ``path`` (a path inside ``storage_path``'s filesystem, as Ray's ``Checkpoint.path``)."""
    if not is_remote(storage_path) or "://" in path:
        return path
    u = urlsplit(storage_path)
    return f"{u.scheme}://{path.lstrip('/')}" + (f"?{u.query}" if u.query else "")


def read_text(uri: str) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    if not is_remote(uri):
        p = Path(uri.removeprefix("file://"))
        return p.read_text() if p.is_file() else None
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def list_dirs(uri: str, prefix: str = "") -> list[str]:
    """The sub-folders of ``uri`` whose names start with ``prefix``, as URIs (none if it does not exist)."""
    if not is_remote(uri):
        p = Path(uri.removeprefix("file://"))
        return sorted(str(c) for c in p.iterdir() if c.is_dir() and c.name.startswith(prefix)) if p.is_dir() else []
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))
    return [join(uri, n) for n in names]


def write_text(uri: str, text: str) -> None:
    """Write a small file whole (a local file through a temp file and rename)."""
    if not is_remote(uri):
        from vreid.io import atomic_write_text

        atomic_write_text(uri.removeprefix("file://"), text)
        return
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:  # S3 objects appear only when the upload completes
        f.write(text.encode())


def cache_dir() -> Path:
    return Path(os.environ.get("VREID_CHECKPOINT_CACHE") or Path(tempfile.gettempdir()) / "vreid-checkpoints")


def local_checkpoint(uri: str) -> str:
    """A local folder holding checkpoint ``uri`` (a local path is returned as it is)."""
    uri = str(uri)
    if not is_remote(uri):
        return uri.removeprefix("file://")
    import pyarrow.fs as pafs

    target = cache_dir() / hashlib.sha1(uri.encode()).hexdigest()[:20]
    if target.is_dir():
        return str(target)
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise VreidError(f"checkpoint not found: {uri}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            tmp.rename(target)
        except OSError:  # another process of this node finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def dashboard_url() -> Optional[str]:
    """The head's dashboard address as the cluster records it (``host:port``), or None."""
    import ray._private.services as services

    try:
        url = services.get_webui_url_from_internal_kv()
    except Exception:  # not connected, or an older GCS without the key
        return None
    return url.decode() if isinstance(url, bytes) else (url or None)


def node_loss_warning(nodes: Optional[int] = None, url: Optional[str] = "") -> Optional[str]:
    """On a cluster of more than one node, a warning when the head's dashboard does not answer.

    Ray Train removes the worker-group placement groups of Train controllers that died with a lost node
    through its placement-group cleaner, which asks the dashboard's State API whether a controller is
    dead. Without a dashboard those groups stay reserved (and are re-placed on the surviving nodes), and
    the retried trials wait for the CPUs they hold (seen on a two-node cluster here, README). ``url``:
    the recorded dashboard address (default: asked from the cluster)."""
    import urllib.request

    nodes = alive_nodes() if nodes is None else nodes
    if nodes <= 1:
        return None
    url = dashboard_url() if url == "" else url
    if url:
        try:
            with urllib.request.urlopen(f"http://{url.removeprefix('http://')}/api/version", timeout=3) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
    return (f"this Ray cluster has {nodes} nodes but its head's dashboard does not answer"
            f"{f' at {url}' if url else ''}: if a node is lost, Ray Train cannot remove the lost controllers' "
            "placement groups and the retried trials may wait for ever; start the head with the dashboard on "
            "(`ray start --head --include-dashboard=true`, as ray_cluster.yaml does)")


def _under(path: str, mount: str) -> bool:
    p, m = Path(path).resolve(), Path(mount).resolve()
    return p == m or m in p.parents


def check_cluster_storage(storage_path: str, tracking_uri: str, shared: Optional[str] = None,
                          nodes: Optional[int] = None) -> None:
    """Refuse node-local storage on a multi-node cluster (see the module docstring). ``shared``: a
    mount point every node sees (default ``$VREID_SHARED_STORAGE``); ``nodes``: the alive node count
    (default: asked from Ray)."""
    shared = shared or os.environ.get(SHARED_ENV) or None
    if shared and not Path(shared).is_dir():
        raise VreidError(f"--shared-storage {shared}: not a folder on this node")
    nodes = alive_nodes() if nodes is None else nodes
    if nodes <= 1:
        return
    hint = ("use a URI every node can reach (s3://bucket/prefix, gs://...) or a shared mount (NFS, EFS) and "
            f"name it with --shared-storage MOUNT (or ${SHARED_ENV})")
    if not is_remote(storage_path) and not (shared and _under(storage_path, shared)):
        raise VreidError(f"output.storage_path {storage_path} is a local folder but this Ray cluster has {nodes} "
                         f"nodes: checkpoints written on one node cannot be read on the others; {hint}")
    if tracking_uri.startswith("sqlite:///"):
        db = tracking_uri.removeprefix("sqlite:///")
        if not (shared and _under(db, shared)):
            raise VreidError(f"MLflow store {tracking_uri} is a local SQLite file but this Ray cluster has {nodes} "
                             "nodes: trials on other nodes would log elsewhere; run `mlflow server` and pass "
                             "--tracking-uri http://<head>:5000, or put the database on a shared mount named "
                             "with --shared-storage")
