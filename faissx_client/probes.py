"""``faissx health`` and ``faissx status``: is the server up, and how is it doing.

``health`` is for Docker's ``HEALTHCHECK`` and Kubernetes probes: one ``ping`` (which needs no
key), one attempt, a short timeout, one line of output, exit 0 when the server answered and 1
when it did not. It uses a socket of its own rather than the client's transport, so no retry or
reconnection policy can stretch it past the probe's own timeout.

``status`` asks the ``stats`` operation (with the caller's key) and prints it as tables: the
server's version, uptime, connections, workers and durability, and the tenant's indices with
their vectors, memory and write-ahead-log sizes.
"""

from __future__ import annotations

import json
import sys
import time

import rich_click as click
import zmq
from rich.console import Console
from rich.table import Table

from faissx_client.admin import _connection, connect
from faissx_client.settings import ClientSettings
from faissx_core.errors import FaissxError
from faissx_core.messages import PROTOCOL_VERSION
from faissx_core.protocol import encode, recv_reply, send
from faissx_core.security import configure_dealer


def probe(settings: ClientSettings, timeout: float) -> tuple[bool, str]:
    """Ping the server once: (healthy, one line saying what happened)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        configure_dealer(sock, settings)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(settings.server)
        start = time.perf_counter()
        send(sock, encode({"v": PROTOCOL_VERSION, "id": 1, "op": "ping"}))
        if not sock.poll(int(timeout * 1000)):
            return False, f"unhealthy: no reply from {settings.server} within {timeout:g}s"
        reply, _ = recv_reply(sock)
        elapsed = (time.perf_counter() - start) * 1000
        if not reply.ok:
            error = reply.error.message if reply.error else "no reason given"
            return False, f"unhealthy: {settings.server} refused ping: {error}"
        version = reply.result.get("version", "?")
        return True, f"ok: faissx {version} at {settings.server} answered in {elapsed:.1f} ms"
    except (zmq.ZMQError, FaissxError, ValueError) as exc:
        return False, f"unhealthy: {settings.server}: {exc}"
    finally:
        sock.close(0)
        ctx.term()


@click.command("health")
@click.option(
    "--server",
    envvar="FAISSX_SERVER",
    default="tcp://localhost:45678",
    show_default=True,
    help="Server endpoint.",
)
@click.option(
    "--timeout",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds to wait for the answer (one attempt, no retries).",
)
def health_cmd(server: str, timeout: float) -> None:
    """Exit 0 if the server answers a ping within TIMEOUT, else 1 (for container probes)."""
    try:
        settings = ClientSettings.from_env(server=server)
    except ValueError as exc:
        click.echo(f"unhealthy: {exc}".splitlines()[0])
        sys.exit(1)
    healthy, line = probe(settings, timeout)
    click.echo(line)
    sys.exit(0 if healthy else 1)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw stats as JSON.")
@_connection
def status_cmd(
    as_json: bool, server: str, api_key: str | None, tenant: str | None, timeout: float
) -> None:
    """The server's uptime, version, connections, indices, memory and log sizes."""
    with connect(server, api_key, tenant, timeout) as client:
        stats = client.call("stats")[0]
    console = Console()
    if as_json:
        console.print_json(json.dumps(stats))
        return
    vitals = Table(title=f"faissx at {server}", show_header=False)
    vitals.add_column("what", style="bold")
    vitals.add_column("value")
    limit = stats.get("memory_limit_bytes")
    rows = [
        ("version", stats["version"]),
        ("uptime", _duration(stats["uptime_s"])),
        (
            "connections",
            f"{stats['connections']} open, {stats['connections_accepted']} since start",
        ),
        ("requests", f"{stats['requests']:,} answered"),
        ("workers", str(stats["workers"])),
        ("durability", f"data dir, fsync={stats['fsync']}" if stats["durable"] else "in memory"),
        (
            "metrics",
            f"port {stats['metrics_port']}" if stats["metrics_port"] is not None else "off",
        ),
        ("tenant", stats["tenant"]),
        (
            "tenant memory",
            _bytes(stats["memory_bytes"]) + (f" (server limit {_bytes(limit)})" if limit else ""),
        ),
    ]
    if "server" in stats:
        rows.append(
            (
                "all tenants",
                f"{stats['server']['indexes']} indices, {_bytes(stats['server']['memory_bytes'])}",
            )
        )
    for what, value in rows:
        vitals.add_row(what, value)
    console.print(vitals)
    indexes = Table(title=f"indices of tenant {stats['tenant']}")
    for column in ("name", "type", "vectors", "memory", "log"):
        indexes.add_column(
            column, justify="right" if column in ("vectors", "memory", "log") else "left"
        )
    for info in stats["indexes"]:
        log_bytes = info.get("log_bytes")
        indexes.add_row(
            info["name"],
            info["type"],
            f"{info['ntotal']:,}",
            _bytes(info["memory_bytes"]),
            "-" if log_bytes is None else _bytes(log_bytes),
        )
    console.print(indexes)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours:d}h {minutes:02d}m {secs:02d}s"
    return f"{days}d {text}" if days else text
