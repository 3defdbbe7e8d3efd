"""Offline copies of a data directory: ``faissx backup`` and ``faissx restore``.

A backup may be taken while the server runs. Each index is copied as one consistent pair: the
snapshot ``meta.json`` names, and the write-ahead log of that generation up to its current
length. If the server snapshots the index mid-copy (the generation moves on and the old files
go), that index is copied again. A log copied mid-append ends in a torn record, which recovery
drops exactly like the tail of a crash: the copy holds a prefix of the index's history. Each
index is consistent on its own; different indices may be copied at slightly different moments.
An index the server quarantines (damaged files) is copied byte for byte as it is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from faissx_core.server.storage import LOCK_FILE

ATTEMPTS = 5
#: Told each index as it is copied: its ``tenant/name`` and the bytes copied for it.
OnIndex = Callable[[str, int], None]


def index_folders(root: Path) -> list[Path]:
    """The index directories of a data directory or backup, in the order they are copied."""
    # a name starting with "." is a create or delete in progress, or a commit intent
    return sorted(f for f in (root / "tenants").glob("*/*") if not f.name.startswith("."))


def backup(data_dir: Path, dest: Path, on_index: OnIndex | None = None) -> list[str]:
    """Copy every index of ``data_dir`` into ``dest`` (which must not exist); returns them."""
    if not (data_dir / "tenants").is_dir():
        raise ValueError(f"{data_dir} is not a FAISSx data directory (no tenants/)")
    if dest.exists():
        raise ValueError(f"{dest} already exists; back up into a new directory")
    copied = []
    for folder in index_folders(data_dir):
        target = dest / "tenants" / folder.parent.name / folder.name
        for _ in range(ATTEMPTS):
            try:
                done = _copy_index(folder, target)
            except (OSError, ValueError, KeyError, TypeError):
                # damaged (the server quarantines it): every byte is copied as it is
                _copy_as_is(folder, target)
                copied.append(f"{folder.parent.name}/{folder.name} (damaged: copied as is)")
                break
            if done:
                copied.append(f"{folder.parent.name}/{folder.name}")
                break
        else:
            raise RuntimeError(f"{folder} kept changing generation; try again")
        if on_index is not None:
            on_index(copied[-1], _size(target))
    return copied


def _copy_as_is(folder: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_dir():
        shutil.copytree(folder, target)
    else:
        shutil.copy2(folder, target)


def _copy_index(folder: Path, target: Path) -> bool:
    """One attempt at a consistent copy; False if the generation moved underneath it."""
    try:
        meta_text = (folder / "meta.json").read_text()
        gen = int(json.loads(meta_text)["generation"])
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copyfile(folder / f"snapshot-{gen}.faiss", target / f"snapshot-{gen}.faiss")
        keys = folder / f"keys-{gen}.msgpack"  # idempotency keys folded into the snapshot
        if json.loads(meta_text).get("keys"):
            shutil.copyfile(keys, target / keys.name)
        log = folder / f"wal-{gen}.log"
        shutil.copyfile(log, target / f"wal-{gen}.log")
    except FileNotFoundError as exc:
        if json.loads((folder / "meta.json").read_text())["generation"] == gen:
            raise ValueError(f"{exc.filename} is missing") from None  # damaged, not moving
        return False  # a snapshot replaced these files while we copied
    (target / "meta.json").write_text(meta_text)
    return json.loads((folder / "meta.json").read_text())["generation"] == gen


def restore(
    backup_dir: Path, data_dir: Path, force: bool = False, on_index: OnIndex | None = None
) -> list[str]:
    """Copy a backup into ``data_dir``, which must be empty (or ``force``) and not in use."""
    if not (backup_dir / "tenants").is_dir():
        raise ValueError(f"{backup_dir} is not a FAISSx backup (no tenants/)")
    if (data_dir / LOCK_FILE).exists() and _locked(data_dir / LOCK_FILE):
        raise ValueError(f"{data_dir} is in use by a running server; stop it first")
    if data_dir.exists() and any(data_dir.iterdir()) and not force:
        raise ValueError(f"{data_dir} is not empty; pass --force to replace its indices")
    restored = []
    for folder in index_folders(backup_dir):
        target = data_dir / "tenants" / folder.parent.name / folder.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target)
        restored.append(f"{folder.parent.name}/{folder.name}")
        if on_index is not None:
            on_index(restored[-1], _size(target))
    return restored


def _size(path: Path) -> int:
    """Bytes copied for one index (a damaged entry may be a plain file)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _locked(path: Path) -> bool:
    import fcntl

    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
