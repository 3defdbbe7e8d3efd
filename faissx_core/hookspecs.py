"""The plugin contract.

A plugin is any module (or object) with functions marked ``@hookimpl`` and named after the
specs below, advertised under the entry-point group ``faissx.plugins``::

    [project.entry-points."faissx.plugins"]
    mine = "my_pkg.plugin"

The server and the client both discover the group; each docstring here is the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from faissx_core.server.storage import IndexStore
    from faissx_core.settings import ServerSettings
    from faissx_core.specs import IndexType
    from faissx_core.tenancy import Principal

PROJECT = "faissx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def faissx_index_types() -> Sequence[IndexType]:  # type: ignore[empty-body]  # a spec: never run
    """Return the index types this plugin provides.

    Called once at discovery, on the server and on the client. Type names are global: two
    plugins declaring the same name is an error at start-up. ``build`` runs only on the server
    (or in a local-mode client for names faiss itself lacks) and must return a faiss
    ``Index`` or ``IndexBinary``.
    """


@hookspec(firstresult=True)
def faissx_authenticate(
    api_key: str | None, tenant: str | None, settings: ServerSettings
) -> Principal | None:
    """Resolve a request's credentials to a :class:`Principal`, or return None to pass.

    ``tenant`` is the tenant the client claims. An implementation that recognises the key but
    not the claim raises ``PermissionDenied``; one that rejects the key raises
    ``Unauthenticated``. The first non-None answer wins; the built-in key store answers last.
    Never log or store ``api_key`` in clear text.
    """


@hookspec(firstresult=True)
def faissx_open_store(settings: ServerSettings) -> IndexStore | None:
    """Return the store that persists indices for these settings, or None to pass.

    Called once at server start. The built-in filesystem store answers when ``data_dir`` is
    set; with no store the server keeps everything in memory.
    """
