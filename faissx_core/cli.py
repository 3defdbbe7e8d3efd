"""The ``faissx`` command (and the seed's ``faissx.server run`` spelling of ``faissx serve``)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

import rich_click as click
import zmq
from pydantic import ValidationError

from faissx_core import __version__
from faissx_core.server.keys_cli import keys
from faissx_core.server.logs import setup as setup_logging
from faissx_core.settings import DEFAULT_PORT, ServerSettings, parse_auth_keys

# rich's Console and Table are imported by the commands that print with them: `faissx serve`
# (every server start, every restart) does not pay for them.

click.rich_click.USE_MARKDOWN = True


def _serve_options(fn):
    options = [
        click.option(
            "--port",
            type=int,
            default=DEFAULT_PORT,
            show_default=True,
            envvar="FAISSX_PORT",
            help="TCP port to listen on.",
        ),
        click.option(
            "--bind-address",
            default="127.0.0.1",
            show_default=True,
            envvar="FAISSX_BIND_ADDRESS",
            help="Address to bind; `0.0.0.0` exposes the server to the network.",
        ),
        click.option(
            "--ipc",
            type=click.Path(path_type=Path),
            default=None,
            envvar="FAISSX_IPC",
            help="Also listen on this Unix socket (`ipc://PATH`), for same-host clients.",
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path),
            default=None,
            envvar="FAISSX_DATA_DIR",
            help="Directory for durable indices; in-memory when omitted.",
        ),
        click.option(
            "--fsync",
            type=click.Choice(["always", "batch", "off"]),
            default="always",
            show_default=True,
            envvar="FAISSX_FSYNC",
            help="When a write is acknowledged: after its own fsync, after a fsync "
            "shared with concurrent writers, or once the OS has it.",
        ),
        click.option(
            "--snapshot-every-mb",
            type=float,
            default=256.0,
            show_default=True,
            envvar="FAISSX_SNAPSHOT_EVERY_MB",
            help="Snapshot an index once its write-ahead log exceeds this size.",
        ),
        click.option(
            "--plugins",
            default=None,
            envvar="FAISSX_PLUGINS",
            help="Comma-separated plugin names to enable (default: all discovered).",
        ),
        click.option(
            "--enable-auth",
            is_flag=True,
            default=False,
            envvar="FAISSX_ENABLE_AUTH",
            help="Require an API key on every request.",
        ),
        click.option(
            "--auth-keys",
            default=None,
            envvar="FAISSX_AUTH_KEYS",
            help="API keys as `key1:tenant1,key2:tenant2`.",
        ),
        click.option(
            "--auth-file",
            type=click.Path(path_type=Path),
            default=None,
            envvar="FAISSX_AUTH_FILE",
            help='JSON file `{"key": "tenant"}`.',
        ),
        click.option(
            "--log-level",
            default="INFO",
            show_default=True,
            envvar="FAISSX_LOG_LEVEL",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        ),
        # operations: docs/operations.md
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            envvar="FAISSX_LOG_FORMAT",
            help="`json`: one JSON object a line, for log shippers.",
        ),
        click.option(
            "--log-requests",
            type=click.Choice(["all", "errors", "none"]),
            default="errors",
            show_default=True,
            envvar="FAISSX_LOG_REQUESTS",
            help="Which requests get a log line (request id, tenant, op, index, "
            "outcome, duration).",
        ),
        click.option(
            "--metrics-port",
            type=int,
            default=None,
            envvar="FAISSX_METRICS_PORT",
            help="Serve Prometheus metrics at `http://BIND-ADDRESS:PORT/metrics` (default: off).",
        ),
        click.option(
            "--workers",
            type=int,
            default=None,
            envvar="FAISSX_WORKERS",
            help="Threads doing faiss work (default: one per core).",
        ),
        click.option(
            "--idle-ttl",
            type=float,
            default=600.0,
            show_default=True,
            envvar="FAISSX_IDLE_TTL",
            help="Seconds an unnamed index outlives its silent client.",
        ),
        click.option(
            "--max-memory",
            type=float,
            default=None,
            envvar="FAISSX_MAX_MEMORY",
            help="MiB all indices together may hold; a create or add that would go "
            "past it is refused with `quota_exceeded` (default: no limit).",
        ),
        click.option(
            "--gpu",
            is_flag=True,
            default=False,
            envvar="FAISSX_GPU",
            help="Search on GPU copies of the indices faiss supports on GPU (needs "
            "faiss-gpu and a GPU).",
        ),
        # past one machine: docs/distributed.md
        click.option(
            "--backend",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            envvar="FAISSX_BACKEND",
            help="Where indices live: this process, or Ray actors (shards x replicas; "
            "needs `pip install 'faissx[ray]'`).",
        ),
        click.option(
            "--ray-address",
            default="local",
            show_default=True,
            envvar="FAISSX_RAY_ADDRESS",
            help="`local` starts Ray here on 127.0.0.1; `auto` joins this machine's "
            "cluster; or a GCS address / `ray://host:port`.",
        ),
        click.option(
            "--ray-node-ip-address",
            "ray_node_ip",
            default="127.0.0.1",
            show_default=True,
            envvar="FAISSX_RAY_NODE_IP",
            help="This machine's address in the Ray cluster (loopback unless the "
            "cluster spans machines).",
        ),
        click.option(
            "--shards",
            type=int,
            default=1,
            show_default=True,
            envvar="FAISSX_SHARDS",
            help="Default shards per index (--backend ray).",
        ),
        click.option(
            "--replicas",
            type=int,
            default=1,
            show_default=True,
            envvar="FAISSX_REPLICAS",
            help="Default replicas per shard (--backend ray).",
        ),
        # security and limits: docs/security.md
        click.option(
            "--curve-secret-key",
            default=None,
            envvar="FAISSX_CURVE_SECRET_KEY",
            help="Encrypt connections with CURVE: the server's Z85 secret key, or a "
            "file holding it (`faissx keys curve`; a file keeps it out of `ps`).",
        ),
        click.option(
            "--curve-allow-keys",
            type=click.Path(path_type=Path),
            default=None,
            envvar="FAISSX_CURVE_ALLOW_KEYS",
            help="File of client CURVE public keys, one a line: only they connect.",
        ),
        click.option(
            "--max-message-mb",
            type=float,
            default=256.0,
            show_default=True,
            envvar="FAISSX_MAX_MESSAGE_MB",
            help="Largest frame accepted (a larger one drops the connection) and "
            "largest reply built; 0: no limit.",
        ),
        click.option(
            "--max-request-vectors",
            type=int,
            default=1_000_000,
            show_default=True,
            envvar="FAISSX_MAX_REQUEST_VECTORS",
            help="Most vectors one request may send or ask back; 0: no limit.",
        ),
        click.option(
            "--max-dimension",
            type=int,
            default=65536,
            show_default=True,
            envvar="FAISSX_MAX_DIMENSION",
            help="Largest dimension of a new or imported index; 0: no limit.",
        ),
        click.option(
            "--tenant-max-indices",
            type=int,
            default=1000,
            show_default=True,
            envvar="FAISSX_TENANT_MAX_INDICES",
            help="Indices (named and unnamed) per tenant; 0: no limit.",
        ),
        click.option(
            "--tenant-max-vectors",
            type=int,
            default=0,
            show_default=True,
            envvar="FAISSX_TENANT_MAX_VECTORS",
            help="Vectors stored per tenant; 0: no limit.",
        ),
        click.option(
            "--tenant-max-mb",
            type=float,
            default=0.0,
            show_default=True,
            envvar="FAISSX_TENANT_MAX_MB",
            help="MiB of stored vectors (n x d x 4, binary n x d / 8) per tenant; 0: no limit.",
        ),
        click.option(
            "--rate-limit",
            type=float,
            default=10_000.0,
            show_default=True,
            envvar="FAISSX_RATE_LIMIT",
            help="Requests per second per API key (with --enable-auth); 0: no limit.",
        ),
        click.option(
            "--rate-burst",
            type=int,
            default=None,
            envvar="FAISSX_RATE_BURST",
            help="Requests an API key may send at once (default: 2 s of --rate-limit).",
        ),
        click.option(
            "--max-peer-output-mb",
            type=float,
            default=256.0,
            show_default=True,
            envvar="FAISSX_MAX_PEER_OUTPUT_MB",
            help="Reply MiB held for one client that reads slowly; past it its replies "
            "are dropped; 0: no limit.",
        ),
        click.option(
            "--max-connections",
            type=int,
            default=None,
            envvar="FAISSX_MAX_CONNECTIONS",
            help="Client connections open at once; past it a new one is turned away "
            "(default: half the open-file limit, raised to the hard limit at "
            "start; 0: no limit).",
        ),
        click.option(
            "--progress-every",
            type=float,
            default=1.0,
            show_default=True,
            envvar="FAISSX_PROGRESS_EVERY",
            help="Seconds between `working` heartbeats to a request still running, "
            "so a client's timeout bounds silence, not work.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _serve(
    port: int,
    bind_address: str,
    ipc: Path | None,
    data_dir: Path | None,
    fsync: str,
    snapshot_every_mb: float,
    plugins: str | None,
    enable_auth: bool,
    auth_keys: str | None,
    auth_file: Path | None,
    log_level: str,
    workers: int | None,
    idle_ttl: float,
    max_memory: float | None = None,
    gpu: bool = False,
    curve_secret_key: str | None = None,
    curve_allow_keys: Path | None = None,
    max_message_mb: float = 256.0,
    max_request_vectors: int = 1_000_000,
    max_dimension: int = 65536,
    tenant_max_indices: int = 1000,
    tenant_max_vectors: int = 0,
    tenant_max_mb: float = 0.0,
    rate_limit: float = 10_000.0,
    rate_burst: int | None = None,
    progress_every: float = 1.0,
    max_connections: int | None = None,
    max_peer_output_mb: float = 256.0,
    backend: str = "local",
    ray_address: str = "local",
    ray_node_ip: str = "127.0.0.1",
    shards: int = 1,
    replicas: int = 1,
    log_format: str = "text",
    log_requests: str = "errors",
    metrics_port: int | None = None,
) -> None:
    """Run the FAISSx server until SIGINT or SIGTERM."""
    from faissx_core.server.app import run_server  # keeps `faissx --help` quick

    try:
        extra: dict[str, Any] = {"workers": workers} if workers is not None else {}
        extra.update(max_memory_mb=max_memory, gpu=gpu)
        extra.update(  # security and limits
            curve_secret_key=curve_secret_key,
            curve_allow_keys=curve_allow_keys,
            max_message_bytes=int(max_message_mb * (1 << 20)),
            max_request_vectors=max_request_vectors,
            max_dimension=max_dimension,
            tenant_max_indices=tenant_max_indices,
            tenant_max_vectors=tenant_max_vectors,
            tenant_max_bytes=int(tenant_max_mb * (1 << 20)),
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            progress_every=progress_every,
            max_connections=max_connections,
            max_peer_output_bytes=int(max_peer_output_mb * (1 << 20)),
        )
        extra.update(
            backend=backend,
            ray_address=ray_address,
            ray_node_ip=ray_node_ip,
            shards=shards,
            replicas=replicas,
        )
        extra.update(log_format=log_format, log_requests=log_requests, metrics_port=metrics_port)
        settings = ServerSettings(
            port=port,
            bind_address=bind_address,
            ipc=ipc,
            data_dir=data_dir,
            fsync=fsync,
            snapshot_bytes=int(snapshot_every_mb * (1 << 20)),
            plugins=[p.strip() for p in plugins.split(",") if p.strip()] if plugins else None,
            enable_auth=enable_auth,
            auth_keys=parse_auth_keys(auth_keys or ""),
            auth_file=auth_file,
            log_level=log_level,
            idle_ttl=idle_ttl,
            **extra,
        )
    except (ValidationError, ValueError) as exc:
        raise click.BadParameter(_reason(exc)) from None
    setup_logging(settings.log_level, settings.log_format, settings.log_requests)
    try:
        status = run_server(settings)
    except ValueError as exc:  # e.g. an unknown plugin name, found at discovery
        raise click.UsageError(str(exc)) from None
    except (OSError, zmq.ZMQError) as exc:  # the port is taken, the data dir unusable
        raise click.ClickException(_start_failure(exc, settings)) from None
    if status:  # 3: a log could not be synced at shutdown (docs/durability.md)
        sys.exit(status)


def _serve_command(name: str) -> click.Command:
    """A fresh command object per spelling (click consumes the options a function carries)."""

    def command(**options: object) -> None:
        _serve(**options)  # type: ignore[arg-type]

    command.__doc__ = _serve.__doc__
    return click.command(name)(_serve_options(command))


serve = _serve_command("serve")
run = _serve_command("run")


class LazyGroup(click.RichGroup):
    """A command group some of whose commands are imported only when they are used.

    ``lazy`` maps a command's name to ``"module:attribute"``. ``faissx serve`` must not import
    the drop-in client just because the same ``faissx`` command also offers the client's admin
    commands: that import took about a second of every server's start, and would patch faiss's
    classes inside the server process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, _, attribute = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="faissx")
def main() -> None:
    """**FAISSx** serves FAISS indices over ZeroMQ."""


@main.command("plugins")
@click.option(
    "--markdown",
    is_flag=True,
    help="Print every index type as a Markdown table (docs/index-types.md).",
)
def plugins_cmd(markdown: bool) -> None:
    """List the discovered plugins and the index types each provides."""
    from rich.console import Console
    from rich.table import Table

    from faissx_core.plugins import PluginRegistry

    registry = PluginRegistry()
    if markdown:
        click.echo(types_markdown(registry), nl=False)
        return
    table = Table(title="faissx plugins (entry-point group faissx.plugins)")
    for column in ("plugin", "module", "distribution", "index types"):
        table.add_column(column)
    for info in registry.plugins.values():
        table.add_row(
            info.name, info.module, info.dist, ", ".join(t.name for t in info.types) or "-"
        )
    Console(width=160).print(table)


main.add_command(serve)
main.add_command(keys)


def types_markdown(registry: object) -> str:
    """One row per index type and component: constructor, runtime parameters, description."""
    lines = [
        "| type | plugin | kind | vectors | constructor | runtime parameters | what it is |",
        "|---|---|---|---|---|---|---|",
    ]
    for info in registry.plugins.values():  # type: ignore[attr-defined]
        if not info.enabled:
            continue
        for itype in info.types:
            fields = itype.params.model_fields
            args = ", ".join(
                name if field.is_required() else f"{name}={field.default!r}"
                for name, field in fields.items()
            )
            params = ", ".join(f"`{p.name}`" for p in itype.runtime_params) or (
                "those of the wrapped index" if itype.dynamic_params else "-"
            )
            lines.append(
                f"| `{itype.name}` | {info.name} | {itype.kind} | {itype.vector_kind} "
                f"| `{itype.name}({args})` | {params} | {itype.doc} |"
            )
    return "\n".join(lines) + "\n"


@main.command("backup")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
def backup_cmd(data_dir: Path, dest: Path) -> None:
    """Copy DATA_DIR's indices to DEST, consistently, even while the server runs."""
    from rich.console import Console

    from faissx_core.progress import progress
    from faissx_core.server.backup import backup, index_folders

    try:
        with progress("backup", len(index_folders(data_dir)), "indices") as steps:
            copied = backup(
                data_dir, dest, lambda name, size: steps.advance(1, f"{name} ({size} bytes)")
            )
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    Console().print(f"backed up {len(copied)} index(es) to {dest}")


@main.command("restore")
@click.argument("backup_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace indices already in DATA_DIR.")
def restore_cmd(backup_dir: Path, data_dir: Path, force: bool) -> None:
    """Copy a backup into DATA_DIR; the server using DATA_DIR must be stopped."""
    from rich.console import Console

    from faissx_core.progress import progress
    from faissx_core.server.backup import index_folders, restore

    try:
        with progress("restore", len(index_folders(backup_dir)), "indices") as steps:
            restored = restore(
                backup_dir,
                data_dir,
                force,
                lambda name, size: steps.advance(1, f"{name} ({size} bytes)"),
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    Console().print(f"restored {len(restored)} index(es) into {data_dir}")


@main.group("cluster")
def cluster() -> None:
    """The Ray cluster behind `faissx serve --backend ray`."""


@cluster.command("status")
@click.option(
    "--ray-address",
    default="auto",
    show_default=True,
    envvar="FAISSX_RAY_ADDRESS",
    help="The cluster to inspect (`auto`: the one this machine joined).",
)
@click.option(
    "--ray-node-ip-address",
    "ray_node_ip",
    default="127.0.0.1",
    show_default=True,
    envvar="FAISSX_RAY_NODE_IP",
    help="This machine's address in the cluster.",
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for each replica's answer.",
)
def cluster_status(ray_address: str, ray_node_ip: str, timeout: float) -> None:
    """One row per replica: index, shard, replica, actor state, node, vectors, memory."""
    from rich.console import Console
    from rich.table import Table

    from faissx_core.server.ray_loopback import keep_loopback

    keep_loopback(ray_node_ip)
    try:
        import ray
    except ImportError:
        raise click.ClickException("Ray is not installed: pip install 'faissx[ray]'") from None
    from faissx_core.server.ray_backend import NAMESPACE, cluster_rows

    ray.init(
        address=ray_address,
        namespace=NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address=ray_node_ip,
    )
    try:
        rows = cluster_rows(ray, timeout)
        nodes = {n["NodeID"]: n for n in ray.nodes()}
    finally:
        ray.shutdown()
    table = Table(title=f"faissx on Ray ({len(nodes)} node(s), {len(rows)} replica actor(s))")
    for column in (
        "tenant/index",
        "shard",
        "replica",
        "actor state",
        "restarts",
        "node",
        "pid",
        "vectors",
        "memory",
        "write #",
    ):
        table.add_column(column)
    for row in rows:
        node = nodes.get(row.get("node", ""), {})
        where = (
            (
                f"{node.get('NodeManagerAddress', '?')} {row['node'][:8]}"
                + ("" if node.get("Alive", True) else " (dead)")
            )
            if row.get("node")
            else "-"
        )
        table.add_row(
            f"{row['tenant']}/{row['index']}",
            str(row.get("shard", "?")),
            str(row.get("replica", "?")),
            row["state"],
            str(row.get("restarts", "-")),
            where,
            str(row.get("pid", "-")),
            f"{row.get('ntotal', 0):,}",
            f"{row.get('memory_bytes', 0) / (1 << 20):.1f} MiB",
            str(row.get("seq", "-")),
        )
    Console(width=160).print(table)


@click.group()
@click.version_option(__version__, prog_name="faissx.server")
def seed_main() -> None:
    """The seed's spelling: `faissx.server run ...` is `faissx serve ...`."""


seed_main.add_command(run)


def _start_failure(exc: OSError | zmq.ZMQError, settings: ServerSettings) -> str:
    """One line saying why the server could not start, and what to do about it."""
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"cannot listen on {settings.bind_address}:{settings.port}: the address is "
            "already in use (another faissx server, perhaps `make serve`, runs there); stop "
            "it or choose another --port"
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {settings.bind_address}:{settings.port}: no network "
            "interface of this machine has that address (check --bind-address)"
        )
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or str(exc)
        where = (
            "the data dir"
            if settings.data_dir is not None
            and str(exc.filename).startswith(str(settings.data_dir))
            else "a file"
        )
        return f"cannot use {where} {exc.filename}: {reason}"
    return f"the server could not start: {exc}"


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", exc)).removeprefix("Value error, ")
        return f"{where}: {msg}" if where else msg
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
