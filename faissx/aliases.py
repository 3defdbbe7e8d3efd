"""The import hook behind ``faissx.client.*`` and ``faissx.server.*``.

``faissx.client`` is :mod:`faissx_client` and ``faissx.server`` is :mod:`faissx_core.server`:
the same module objects, registered in ``sys.modules`` under both names, but only once some code
imports them (so importing the client never loads the server). Submodules follow:
``faissx.client.recovery`` is ``faissx_client.recovery``, ``faissx.server.app`` is
``faissx_core.server.app``.

The original FAISSx (github.com/muxi-ai/faissx) kept one module per index class under
``faissx.client.indices`` and a few more modules of names; code written for it imports them.
Those have no module of their own here: :data:`ORIGINAL_MODULES` says which of our names each
one holds, and the hook builds a small module of those names (the same objects) on import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

#: alias prefix -> the real package it names
ROOTS = {"faissx.client": "faissx_client", "faissx.server": "faissx_core.server"}

_INDEX_CLASSES = (
    "IndexFlatL2",
    "IndexIVFFlat",
    "IndexHNSWFlat",
    "IndexPQ",
    "IndexIVFPQ",
    "IndexScalarQuantizer",
    "IndexIVFScalarQuantizer",
    "IndexIDMap",
    "IndexIDMap2",
)

#: The original's modules that are not modules here: name -> {attribute: "module:attribute"}.
#: ``faissx.client.indices.ivf_sq`` is the name its README's project structure gives to the
#: module its code calls ``ivf_scalar_quantizer``; both work.
ORIGINAL_MODULES: dict[str, dict[str, str]] = {
    "faissx.client.indices": {
        **{name: f"faissx_client:{name}" for name in _INDEX_CLASSES},
        "index_factory": "faissx_client:index_factory",
        "write_index": "faissx_client:write_index",
        "read_index": "faissx_client:read_index",
        "merge_indices": "faissx_client.modification:merge_indices",
        "split_index": "faissx_client.modification:split_index",
    },
    "faissx.client.index": {
        name: f"faissx_client:{name}"
        for name in _INDEX_CLASSES
        if name != "IndexIVFScalarQuantizer"
    },
    "faissx.client.indices.flat": {"IndexFlatL2": "faissx_client:IndexFlatL2"},
    "faissx.client.indices.hnsw_flat": {"IndexHNSWFlat": "faissx_client:IndexHNSWFlat"},
    "faissx.client.indices.ivf_flat": {"IndexIVFFlat": "faissx_client:IndexIVFFlat"},
    "faissx.client.indices.pq": {"IndexPQ": "faissx_client:IndexPQ"},
    "faissx.client.indices.ivf_pq": {"IndexIVFPQ": "faissx_client:IndexIVFPQ"},
    "faissx.client.indices.scalar_quantizer": {
        "IndexScalarQuantizer": "faissx_client:IndexScalarQuantizer"
    },
    "faissx.client.indices.ivf_scalar_quantizer": {
        "IndexIVFScalarQuantizer": "faissx_client:IndexIVFScalarQuantizer"
    },
    "faissx.client.indices.ivf_sq": {
        "IndexIVFScalarQuantizer": "faissx_client:IndexIVFScalarQuantizer"
    },
    "faissx.client.indices.id_map": {
        "IndexIDMap": "faissx_client:IndexIDMap",
        "IndexIDMap2": "faissx_client:IndexIDMap2",
    },
    "faissx.client.indices.binary_flat": {"IndexBinaryFlat": "faissx_client:IndexBinaryFlat"},
    "faissx.client.indices.binary_ivf": {"IndexBinaryIVF": "faissx_client:IndexBinaryIVF"},
    "faissx.client.indices.binary_hash": {"IndexBinaryHash": "faissx_client:IndexBinaryHash"},
    "faissx.client.indices.pre_transform": {"IndexPreTransform": "faissx_client:IndexPreTransform"},
    "faissx.client.indices.factory": {"index_factory": "faissx_client:index_factory"},
    "faissx.client.transforms": {
        "L2NormTransform": "faissx_client.original:L2NormTransform",
        "PCATransform": "faissx_client.original:PCATransform",
        "RemapDimensionsTransform": "faissx_client.original:RemapDimensionsTransform",
    },
    "faissx.client.indices.io": {
        "read_index": "faissx_client:read_index",
        "write_index": "faissx_client:write_index",
    },
    "faissx.client.indices.modification": {
        "merge_indices": "faissx_client.modification:merge_indices",
        "split_index": "faissx_client.modification:split_index",
    },
}


def real_name(fullname: str) -> str | None:
    """The real module an alias names (``faissx.client.cache`` -> ``faissx_client.cache``)."""
    for alias, real in ROOTS.items():
        if fullname == alias or fullname.startswith(alias + "."):
            return real + fullname[len(alias) :]
    return None


def original_module(fullname: str) -> types.ModuleType:
    """A module of the original's names, each the same object as ours."""
    module = types.ModuleType(fullname, f"The original FAISSx's {fullname}: aliases of ours.")
    names = ORIGINAL_MODULES[fullname]
    for attr, target in names.items():
        source, _, name = target.partition(":")
        setattr(module, attr, getattr(importlib.import_module(source), name))
    vars(module)["__all__"] = list(names)
    if any(other.startswith(fullname + ".") for other in ORIGINAL_MODULES):
        module.__path__ = []  # a package: its submodules are found by the hook too
    return module


class _Alias(importlib.abc.Loader):
    """Loads an alias as the real module (imported under its real name first)."""

    def __init__(self, real: str) -> None:
        self.real = real
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.real)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self._spec  # the import system stamped the alias's spec on it


class _Original(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return original_module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Its names were bound when it was made."""


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``faissx.client[.*]`` and ``faissx.server[.*]`` before the path finder would load a
    second copy of a real module under the alias's name."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        real = real_name(fullname)
        if real is None:
            return None
        if fullname in ORIGINAL_MODULES:
            is_package = any(o.startswith(fullname + ".") for o in ORIGINAL_MODULES)
            return importlib.util.spec_from_loader(fullname, _Original(), is_package=is_package)
        try:
            found = importlib.util.find_spec(real)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, _Alias(real), is_package=found.submodule_search_locations is not None
        )


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
