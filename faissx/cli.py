"""The ``faissx`` command: the server's commands from core plus the client's admin commands.

It lives in the alias package because it is the one place allowed to see both sides: the core
never imports the client.
"""

from faissx_core.cli import main

# The client's commands, imported when one of them runs (LazyGroup): ``faissx serve`` never
# loads the drop-in client.
main.lazy.update(
    {
        "indexes": "faissx_client.admin:indexes",
        "snapshot": "faissx_client.admin:snapshot_cmd",
        "health": "faissx_client.probes:health_cmd",
        "status": "faissx_client.probes:status_cmd",
    }
)

__all__ = ["main"]
