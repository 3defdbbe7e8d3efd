"""Who is asking, and what they may call their indices.

An index is addressed by ``(tenant, name)``. Names double as directory names under the data
directory, so the charset is narrow enough that no name can climb out of it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from faissx_core.errors import InvalidArgument

Role = Literal["admin", "write", "read"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
DEFAULT_TENANT = "default"


class Principal(BaseModel):
    """The authenticated caller: every index it touches lives under ``tenant``."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    role: Role = "admin"

    @property
    def can_write(self) -> bool:
        return self.role in ("admin", "write")


def check_name(name: str, what: str = "index name") -> str:
    """Return ``name`` if it is a safe identifier, else raise InvalidArgument.

    1-128 characters of ``[A-Za-z0-9_.-]``, starting with a letter or digit, never ``..``: no
    separators, no NUL, nothing that means "parent directory".
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        shown = name if isinstance(name, str) and len(name) <= 40 else f"{str(name)[:40]}..."
        raise InvalidArgument(
            f"invalid {what} {shown!r}: use 1-128 characters of letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name
