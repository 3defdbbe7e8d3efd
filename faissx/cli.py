"""The ``faissx`` command: the server's commands from core plus the client's admin commands.

It lives in the alias package because it is the one place allowed to see both sides: the core
never imports the client.
"""

from faissx_client.admin import indexes, snapshot_cmd
from faissx_core.cli import main

main.add_command(indexes)
main.add_command(snapshot_cmd, "snapshot")

__all__ = ["main"]
