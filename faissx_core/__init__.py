"""FAISSx core: the wire protocol, message models, errors, plugin contract, tenancy and server.

The core imports faiss but never ``faissx_client`` or ``faissx_plugins``: plugins reach it only
through the ``faissx.plugins`` entry points.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("faissx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
