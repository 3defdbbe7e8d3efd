"""The built-in filesystem store, a plugin of the ``faissx_open_store`` hook.

Layout under the data directory::

    <data_dir>/tenants/<tenant>/<index>/index.faiss   faiss.write_index output
    <data_dir>/tenants/<tenant>/<index>/meta.json     {"format", "spec", "created"}

Every file is written to a temporary name, fsynced, and renamed over the old one, so a crash
leaves either the previous snapshot or the new one, never a torn file. Tenant and index names are
validated identifiers (``tenancy.check_name``) before they become path components.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss

from faissx_core.hookspecs import hookimpl
from faissx_core.settings import ServerSettings
from faissx_core.specs import IndexSpec
from faissx_core.tenancy import check_name

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class StoredIndex:
    tenant: str
    name: str
    spec: IndexSpec
    created: float
    index: Any


class IndexStore(Protocol):
    """What the server needs from a store. Implementations must be safe to call from threads."""

    def save(self, tenant: str, name: str, spec: IndexSpec, created: float, index: Any) -> None:
        """Persist a snapshot of ``index`` atomically."""

    def delete(self, tenant: str, name: str) -> None:
        """Forget the index; a later ``load_all`` must not return it."""

    def load_all(self) -> Iterator[StoredIndex]:
        """Every stored index, for the server to reopen at start."""


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tenants").mkdir(parents=True, exist_ok=True)

    def _dir(self, tenant: str, name: str) -> Path:
        return self.root / "tenants" / check_name(tenant, "tenant id") / check_name(name)

    def save(self, tenant: str, name: str, spec: IndexSpec, created: float, index: Any) -> None:
        folder = self._dir(tenant, name)
        folder.mkdir(parents=True, exist_ok=True)
        writer = faiss.write_index_binary if isinstance(index, faiss.IndexBinary) else faiss.write_index
        tmp = folder / "index.faiss.tmp"
        writer(index, str(tmp))
        _fsync_rename(tmp, folder / "index.faiss")
        meta = {"format": FORMAT_VERSION, "spec": spec.model_dump(), "created": created,
                "binary": isinstance(index, faiss.IndexBinary), "saved": time.time()}
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        _fsync_rename(tmp, folder / "meta.json")

    def delete(self, tenant: str, name: str) -> None:
        shutil.rmtree(self._dir(tenant, name), ignore_errors=True)

    def load_all(self) -> Iterator[StoredIndex]:
        for folder in sorted((self.root / "tenants").glob("*/*")):
            try:
                meta = json.loads((folder / "meta.json").read_text())
                reader = faiss.read_index_binary if meta.get("binary") else faiss.read_index
                index = reader(str(folder / "index.faiss"))
                yield StoredIndex(folder.parent.name, folder.name,
                                  IndexSpec.model_validate(meta["spec"]), meta["created"], index)
            except Exception as exc:  # one bad directory must not keep the others offline
                log.error("skipping stored index %s: %s", folder, exc)


def _fsync_rename(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@hookimpl(trylast=True)
def faissx_open_store(settings: ServerSettings) -> IndexStore | None:
    return FileStore(settings.data_dir) if settings.data_dir is not None else None
