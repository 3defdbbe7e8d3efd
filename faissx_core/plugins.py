"""Plugin discovery: entry points in, a registry of index types out.

Every plugin, the built-in families included, arrives through the ``faissx.plugins`` entry-point
group (the server adds its own built-ins, the filesystem store and the key store, itself, so
that the client, which builds a registry too, never imports server code). All discovered
plugins are imported so that an error can name the plugin providing a type; only the enabled
ones (``--plugins``) contribute types that can be built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from faissx_core import hookspecs
from faissx_core.errors import (
    FaissxError,
    InvalidArgument,
    InvalidParameters,
    UnknownIndexType,
    faiss_reason,
)
from faissx_core.specs import IMPORTED, REF_TYPE, SERIALIZED, IndexSpec, IndexType

ENTRY_POINT_GROUP = "faissx.plugins"
log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    name: str
    module: str
    dist: str
    enabled: bool
    types: list[IndexType] = field(default_factory=list)


class PluginRegistry:
    """The plugin manager plus the index types of the enabled plugins."""

    def __init__(self, only: Iterable[str] | None = None, group: str = ENTRY_POINT_GROUP) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        wanted = set(only) if only is not None else None
        self.plugins: dict[str, PluginInfo] = {}
        self.types: dict[str, IndexType] = {IMPORTED.name: IMPORTED, SERIALIZED.name: SERIALIZED}
        self._provider: dict[str, str] = {IMPORTED.name: "core", SERIALIZED.name: "core"}
        dist_names: dict[Any, str] = {}
        for ep in entry_points(group=group):
            if ep.name in self.plugins:
                log.warning("plugin %r declared twice; keeping %s", ep.name, self.plugins[ep.name])
                continue
            plugin = ep.load()
            enabled = wanted is None or ep.name in wanted
            info = PluginInfo(ep.name, ep.value, _dist_name(ep, dist_names), enabled)
            self.plugins[ep.name] = info
            impl = getattr(plugin, "faissx_index_types", None)
            for itype in impl() if impl is not None else ():
                info.types.append(itype)
                other = self._provider.setdefault(itype.name, ep.name)
                if other != ep.name:
                    raise RuntimeError(
                        f"index type {itype.name!r} is declared by plugins "
                        f"{other!r} and {ep.name!r}"
                    )
            if enabled:
                self.manager.register(plugin, name=ep.name)
                self.types.update((t.name, t) for t in info.types)
        if wanted is not None and (missing := wanted - set(self.plugins)):
            raise ValueError(
                f"unknown plugin(s) {', '.join(sorted(missing))}; discovered: "
                f"{', '.join(sorted(self.plugins)) or 'none'}"
            )

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def first_result(self, name: str) -> Callable[..., Any]:
        """A ``firstresult`` hook as one callable (keyword arguments), fixed now.

        With a single implementation and no wrappers, that implementation's function itself:
        pluggy's dispatch costs more than a small request's authentication. Call this once
        every plugin is registered (the server does, at start); later registrations are not
        seen by the callable it returned.
        """
        caller = getattr(self.manager.hook, name)
        impls = caller.get_hookimpls()
        if len(impls) == 1 and not (impls[0].hookwrapper or impls[0].wrapper):
            return impls[0].function
        return caller

    def index_type(self, name: str) -> IndexType:
        """The enabled type called ``name``, or an error naming the plugin that would provide it."""
        try:
            return self.types[name]
        except KeyError:
            pass
        provider = self._provider.get(name)
        if provider is not None:
            raise UnknownIndexType(
                f"index type {name!r} is provided by plugin {provider!r}, which this server "
                f"did not enable (start it with --plugins including {provider!r})",
                plugin=provider,
            )
        raise UnknownIndexType(f"no plugin provides index type {name!r}", plugin=None)

    def build(self, spec: IndexSpec, resolve: Callable[..., Any] | None = None) -> Any:
        """Build the faiss object for ``spec``, nested specs recursively.

        ``resolve(name)`` turns a ``ref`` spec into a copy of an existing index (and
        ``resolve(name, path)`` into a copy of the index at a member path inside it, such as an
        IVF's ``quantizer``: a remote proxy handed to a constructor is that member); without it
        references are refused (there is nothing to refer to outside a server).
        """
        if spec.type == REF_TYPE:
            if resolve is None:
                raise InvalidArgument("a reference to an existing index cannot be built here")
            name = spec.params.get("name")
            if not isinstance(name, str) or not name:  # str(7) would name index "7" uncounted
                raise InvalidArgument(
                    f"a ref names an index by a non-empty string, got {type(name).__name__}"
                )
            path = spec.params.get("path") or ""
            if not isinstance(path, str):
                raise InvalidArgument(f"a ref's path is a string, got {type(path).__name__}")
            return resolve(name, path) if path else resolve(name)
        itype = self.index_type(spec.type)
        params = itype.validate_params(spec.params)

        def nested(inner: IndexSpec | dict) -> Any:
            return self.build(IndexSpec.model_validate(inner), resolve)

        try:
            return itype.build(params, nested)
        except (RuntimeError, AssertionError) as exc:  # faiss refusing the parameters
            if isinstance(exc, FaissxError):
                raise
            reason = faiss_reason(str(exc)) or type(exc).__name__
            refused = InvalidParameters if isinstance(exc, RuntimeError) else InvalidArgument
            raise refused(f"cannot build {spec.type}: {reason}") from None


def _dist_name(ep: Any, seen: dict[Any, str]) -> str:
    """``name version`` of the distribution declaring ``ep``, read once per distribution.

    ``dist.name`` and ``dist.version`` each parse the METADATA file anew (the email parser, a
    few milliseconds); the built-in families share one distribution, and every server start,
    client registry and ``faissx`` command builds a registry, so ``seen`` keeps one answer a
    distribution (its entry points share one ``Distribution`` object)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    if dist not in seen:
        meta = dist.metadata
        seen[dist] = f"{meta['Name']} {meta['Version']}"
    return seen[dist]
