"""The seed's spellings, as aliases of the real modules (the same objects, not copies)::

    from faissx import client as faiss      # faissx_client
    from faissx import server               # faissx_core.server
    from faissx.client.recovery import ...  # faissx_client.recovery
    from faissx.client.optimization import memory_manager   # faissx_client.optimization
    from faissx.client.modification import merge_indices    # faissx_client.modification
"""

import sys

import faissx_client as client
import faissx_client.cache
import faissx_client.gpu
import faissx_client.modification
import faissx_client.optimization
import faissx_client.recovery
import faissx_core.server as server
from faissx_core import __version__

sys.modules[__name__ + ".client"] = client
sys.modules[__name__ + ".client.recovery"] = faissx_client.recovery
for _sub in ("optimization", "modification", "cache", "gpu"):  # the seed's client submodules
    sys.modules[f"{__name__}.client.{_sub}"] = getattr(faissx_client, _sub)
sys.modules[__name__ + ".server"] = server

__all__ = ["__version__", "client", "server"]
