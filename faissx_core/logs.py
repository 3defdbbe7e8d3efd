"""Logging set-up shared by ``faissx serve`` and ``faissx.server.run()``."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler


def setup(level: str) -> None:
    """Rich output on a terminal; one plain line per record otherwise (files, journald)."""
    if sys.stderr.isatty():
        logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                            handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    else:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
