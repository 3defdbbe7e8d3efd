"""The ``faissx`` command: the server's commands from core plus the client's admin commands.

It lives in the alias package because it is the one place allowed to see both sides: the core
never imports the client.
"""

from faissx_client.admin import indexes, snapshot_cmd
from faissx_client.probes import health_cmd, status_cmd
from faissx_core.cli import main

main.add_command(indexes)
main.add_command(snapshot_cmd, "snapshot")
main.add_command(health_cmd)
main.add_command(status_cmd)

__all__ = ["main"]
