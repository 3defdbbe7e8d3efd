"""Scaffolding: this family's plugin is being written (it declares no index types yet)."""

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return []
