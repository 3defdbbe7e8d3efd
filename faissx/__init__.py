"""The seed's spellings, as aliases of the real modules (the same objects, not copies)::

    from faissx import client as faiss      # faissx_client
    from faissx import server               # faissx_core.server
"""

import sys

import faissx_client as client
import faissx_core.server as server
from faissx_core import __version__

sys.modules[__name__ + ".client"] = client
sys.modules[__name__ + ".server"] = server

__all__ = ["__version__", "client", "server"]
