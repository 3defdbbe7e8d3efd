"""``faissx keys``: make API keys and their hashes, list an auth file, make CURVE key pairs.

Nothing here talks to a server: these commands write the files ``faissx serve --auth-file`` and
``--curve-secret-key`` / ``--curve-allow-keys`` read at start (restart the server to apply).
A new API key is printed once, on stdout, and only its salted hash is written to the file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import rich_click as click

ROLE_CHOICE = click.Choice(["admin", "write", "read"])
ALGORITHMS = click.Choice(["scrypt", "pbkdf2_sha256"])


@click.group("keys")
def keys() -> None:
    """Make API keys, key hashes and CURVE key pairs (see docs/security.md)."""


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rich_form(path: Path) -> dict[str, Any]:
    """The file's entries in the rich form (an old ``{"key": "tenant"}`` file is converted)."""
    from faissx_core.server.auth import read_key_file

    if not path.exists():
        return {"keys": []}
    try:
        entries = read_key_file(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return {"keys": [e.model_dump(exclude_none=True) for e in entries]}


@keys.command("add")
@click.option("--tenant", required=True, help="The tenant the key works in.")
@click.option(
    "--role",
    type=ROLE_CHOICE,
    default="write",
    show_default=True,
    help="`read`: search only; `write`: also change indices; `admin`: everything.",
)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FAISSX_AUTH_FILE",
    required=True,
    help="The auth file to add the key's hash to (created if missing).",
)
@click.option("--algorithm", type=ALGORITHMS, default="scrypt", show_default=True)
def add_cmd(tenant: str, role: str, path: Path, algorithm: str) -> None:
    """Make a new API key for TENANT: its hash goes into the file, the key to stdout, once."""
    from faissx_core.server.auth import hash_key, key_id_of, new_key
    from faissx_core.tenancy import check_name

    try:
        check_name(tenant, "tenant id")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None
    data = _rich_form(path)
    key = new_key()
    data["keys"].append({"key_hash": hash_key(key, algorithm), "tenant": tenant, "role": role})
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    _write_private(path, json.dumps(data, indent=2) + "\n", mode)
    click.echo(
        f"added key {key_id_of(key)} ({role}, tenant {tenant}) to {path}; "
        "restart the server to use it. The key, shown only now:",
        err=True,
    )
    click.echo(key)


@keys.command("hash")
@click.argument("key", required=False)
@click.option("--algorithm", type=ALGORITHMS, default="scrypt", show_default=True)
def hash_cmd(key: str | None, algorithm: str) -> None:
    """Print the salted hash of KEY for an auth file's `key_hash` (KEY is read from stdin
    when omitted, which keeps it out of the shell's history)."""
    from faissx_core.server.auth import hash_key

    if key is None:
        key = (
            click.prompt("API key", hide_input=True, err=True)
            if sys.stdin.isatty()
            else sys.stdin.readline().rstrip("\r\n")
        )
    if not key:
        raise click.BadParameter("an API key may not be empty", param_hint="KEY")
    click.echo(hash_key(key, algorithm))


@keys.command("list")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="FAISSX_AUTH_FILE",
    required=True,
)
def list_cmd(path: Path) -> None:
    """List an auth file's entries: tenant, role, how the key is kept. Never a key."""
    from rich.console import Console  # here, not at the top: `faissx serve` loads this module
    from rich.table import Table

    from faissx_core.server.auth import parse_hash

    table = Table(title=str(path))
    for column in ("#", "tenant", "role", "stored as", "key id"):
        table.add_column(column)
    for number, entry in enumerate(_rich_form(path)["keys"], 1):
        hashed = parse_hash(entry["key_hash"]) if "key_hash" in entry else None
        table.add_row(
            str(number),
            entry["tenant"],
            entry["role"],
            hashed.algorithm + " hash" if hashed else "clear key",
            (hashed.key_id or "-") if hashed else "-",
        )
    Console().print(table)


@keys.command("curve")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write OUT.key (the secret key, mode 600) and OUT.pub instead of printing.",
)
def curve_cmd(out: Path | None) -> None:
    """Make a CURVE key pair (`zmq.curve_keypair`), for a server or for a client."""
    import zmq

    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    if out is None:
        click.echo(f"public: {public}\nsecret: {secret}")
        return
    secret_path, public_path = Path(f"{out}.key"), Path(f"{out}.pub")
    _write_private(secret_path, secret + "\n")
    _write_private(public_path, public + "\n", 0o644)
    click.echo(f"wrote {secret_path} (secret) and {public_path}: {public}")
