"""Admin commands against a running server: ``faissx indexes ...`` and ``faissx snapshot``.

They speak the same protocol as the drop-in client, with a client of their own (never the
module-level one), so they work from any shell with a server address and a key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import rich_click as click
from rich.console import Console
from rich.table import Table

from faissx_client.client import Client
from faissx_client.settings import ClientSettings
from faissx_core.errors import FaissxError
from faissx_core.progress import progress

console = Console()


def _connection(fn):
    for option in reversed(
        [
            click.option(
                "--server",
                envvar="FAISSX_SERVER",
                default="tcp://localhost:45678",
                show_default=True,
                help="Server endpoint.",
            ),
            click.option("--api-key", envvar="FAISSX_API_KEY", default=None, help="API key."),
            click.option("--tenant", envvar="FAISSX_TENANT_ID", default=None, help="Tenant id."),
            click.option("--timeout", type=float, default=60.0, show_default=True),
        ]
    ):
        fn = option(fn)
    return fn


@contextmanager
def connect(
    server: str, api_key: str | None, tenant: str | None, timeout: float
) -> Iterator[Client]:
    try:
        settings = ClientSettings.checked(
            server=server, api_key=api_key, tenant_id=tenant, timeout=timeout
        )
    except FaissxError as exc:
        raise click.ClickException(str(exc)) from None
    client = Client(settings)
    try:
        client.hello()  # checks the key, and learns the server's message limit
        yield client
    except FaissxError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()


@click.group("indexes")
def indexes() -> None:
    """Inspect and manage the indices of a running server."""


@indexes.command("list")
@_connection
def list_cmd(server: str, api_key: str | None, tenant: str | None, timeout: float) -> None:
    """List this tenant's named indices."""
    with connect(server, api_key, tenant, timeout) as client:
        rows = client.call("list")[0]["indexes"]
    table = Table(title=f"indices on {server}")
    for column in ("name", "type", "class", "d", "ntotal", "trained", "state"):
        table.add_column(column)
    for info in rows:
        if info.get("state") == "damaged":  # quarantined: only its name and why are known
            table.add_row(
                info["name"],
                "-",
                "-",
                "-",
                "-",
                "-",
                f"DAMAGED: {info.get('damaged', '')} (files kept in {info['path']})",
            )
            continue
        table.add_row(
            info["name"],
            info["type"],
            info.get("faiss_class", ""),
            str(info["d"]),
            str(info["ntotal"]),
            "yes" if info["is_trained"] else "no",
            info.get("state", "ok"),
        )
    console.print(table)


@indexes.command("info")
@click.argument("name")
@_connection
def info_cmd(
    name: str, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Everything the server reports about index NAME, as JSON."""
    with connect(server, api_key, tenant, timeout) as client:
        info = client.call("info", name)[0]
    console.print_json(json.dumps(info))


@indexes.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_connection
def delete_cmd(
    name: str, yes: bool, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Delete index NAME and its files."""
    if not yes:
        click.confirm(f"Delete index {name!r} on {server}?", abort=True)
    with connect(server, api_key, tenant, timeout) as client:
        client.call("delete", name)
    console.print(f"deleted {name}")


@indexes.command("snapshot")
@click.argument("name", required=False)
@_connection
def snapshot_cmd(
    name: str | None, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Snapshot index NAME (or every named index of the tenant) and empty its log."""
    with connect(server, api_key, tenant, timeout) as client:
        names = [name] if name else [i["name"] for i in client.call("list")[0]["indexes"]]
        done = []
        with progress("snapshot", len(names), "indices") as steps:
            for each in names:  # one request per index: progress between them
                done += client.call("snapshot", each)[0]["snapshotted"]
                steps.advance(1, each)
    console.print(f"snapshotted: {', '.join(done) or 'nothing'}")


@indexes.command("export")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@_connection
def export_cmd(
    name: str, path: Path, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Write index NAME to PATH as a faiss file (``faiss.read_index`` opens it)."""
    with (
        connect(server, api_key, tenant, timeout) as client,
        progress(f"export {name}", None, "bytes") as steps,
    ):
        data = client.call("serialize", name)[1]["data"]
        steps.advance(data.nbytes, "received")
    path.write_bytes(data.tobytes())
    console.print(f"wrote {name} ({data.nbytes} bytes) to {path}")


def is_faiss_file(data: np.ndarray) -> bool:
    """Whether faiss reads ``data`` as an index (float or binary); faiss raises RuntimeError,
    or MemoryError for sizes a damaged header makes up, on anything else."""
    for reader in (faiss.deserialize_index, faiss.deserialize_index_binary):
        try:
            reader(data)
            return True
        except (RuntimeError, MemoryError, ValueError):
            continue
    return False


@indexes.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("name")
@_connection
def import_cmd(
    path: Path, name: str, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Upload the faiss file PATH as a new named index NAME."""
    data = np.fromfile(path, dtype=np.uint8)
    if not is_faiss_file(data):  # refuse what faiss itself cannot read before sending it
        raise click.ClickException(
            f"{path} is not a faiss index file (faiss.write_index "
            "writes one; `faissx indexes export` too)"
        )
    with (
        connect(server, api_key, tenant, timeout) as client,
        progress(f"import {name}", data.nbytes, "bytes") as steps,
    ):
        info = client.upload(name, data, ephemeral=False, sent=lambda n: steps.advance(n))
    console.print(f"imported {path} as {name}: {info['faiss_class']}, {info['ntotal']} vectors")
    for line in info.get("warnings") or ():
        console.print(f"warning: {line}")


@indexes.command("repair")
@click.argument("name")
@_connection
def repair_cmd(
    name: str, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Rebuild the damaged (quarantined) index NAME from its intact part.

    The server first copies every file of the index, byte for byte, to
    `<data-dir>/damaged/<tenant>/NAME-<time>/`; it then serves the newest readable snapshot plus
    the log records before the first damaged one. Nothing is deleted without that copy.
    """
    with connect(server, api_key, tenant, timeout) as client:
        info = client.call("repair", name)[0]
    console.print(
        f"repaired {name}: {info['ntotal']} vectors ({info['records']} logged "
        f"write(s) replayed); {info['notes']}"
    )
    console.print(f"the damaged files are kept in {info['backup']}")


@indexes.command("drop")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_connection
def drop_cmd(
    name: str, yes: bool, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """Delete the damaged (quarantined) index NAME and all its files, for good."""
    if not yes:
        click.confirm(
            f"Delete the damaged index {name!r} and every file it has on {server}?", abort=True
        )
    with connect(server, api_key, tenant, timeout) as client:
        done = client.call("drop", name)[0]
    console.print(f"dropped {name} (its files were in {done['path']})")
