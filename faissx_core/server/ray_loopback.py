"""Keep a loopback Ray cluster on loopback.

Ray rewrites a bootstrap address on 127.0.0.1 or ``localhost`` to the machine's own network
address before it connects (``ray._private.services.resolve_ip_for_localhost``), so a cluster
whose nodes were started with ``--node-ip-address=127.0.0.1`` cannot be joined at
``127.0.0.1:<port>``. Ray's own switch for single-machine clusters,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, keeps loopback as it is; Ray reads it when it is
imported, so this runs before the first ``import ray``.
"""

from __future__ import annotations

import os
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_loopback(node_ip: str) -> None:
    """Make Ray keep loopback addresses when this process's node address is loopback."""
    if node_ip not in LOOPBACK:
        return
    if "ray" in sys.modules and os.environ.get(SWITCH) != "0":
        raise RuntimeError(
            f"Ray was imported before {SWITCH}=0 could be set: a loopback "
            "cluster would be joined on the machine's network address"
        )
    os.environ[SWITCH] = "0"
