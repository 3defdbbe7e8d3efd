"""The seed's and the original FAISSx's spellings, as aliases of the real modules::

    from faissx import client as faiss      # faissx_client (the same module object)
    from faissx import server               # faissx_core.server
    from faissx.client.recovery import ...  # faissx_client.recovery
    from faissx.client.optimization import memory_manager   # faissx_client.optimization
    from faissx.client.modification import merge_indices    # faissx_client.modification
    from faissx.client.indices.flat import IndexFlatL2       # the original FAISSx's layout
    from faissx import configure, IndexFlatL2                # the original's top-level names

Nothing is imported until it is asked for: ``from faissx import client`` loads the client and
never the server, and ``faissx.server`` is loaded only by code that names it. The import hook
in :mod:`faissx.aliases` resolves ``faissx.client.*`` and ``faissx.server.*`` to the real
modules, so both spellings give one module object in ``sys.modules``.
"""

from __future__ import annotations

from typing import Any

from faissx import aliases
from faissx_core import __version__

aliases.install()

#: The original FAISSx's top-level names (its ``faissx.__all__``), served by the client.
ORIGINAL_TOP_LEVEL = (
    "configure",
    "IndexFlatL2",
    "IndexIVFFlat",
    "IndexHNSWFlat",
    "IndexPQ",
    "IndexIVFPQ",
    "IndexScalarQuantizer",
    "IndexIDMap",
    "IndexIDMap2",
)

__all__ = ["__version__", "client", "server", *ORIGINAL_TOP_LEVEL]


def __getattr__(name: str) -> Any:
    """``faissx.client`` / ``faissx.server`` and the original's top-level names, on first use."""
    if name in ("client", "server"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "configure":
        from faissx_client.original import configure_url

        return configure_url
    if name in ORIGINAL_TOP_LEVEL:
        import faissx_client

        return getattr(faissx_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
