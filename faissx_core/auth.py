"""The built-in key store: API key -> tenant, as a plugin of the ``faissx_authenticate`` hook.

Keys are kept only as SHA-256 digests, so a heap dump or a log line never holds one in clear.
A presented key is compared against every stored digest with ``hmac.compare_digest``, so the time
taken says nothing about which key, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac

from faissx_core.errors import PermissionDenied, Unauthenticated
from faissx_core.hookspecs import hookimpl
from faissx_core.settings import ServerSettings
from faissx_core.tenancy import DEFAULT_TENANT, Principal, check_name


def digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode("utf-8")).digest()


class KeyStore:
    """Registered by the server; answers last so any other auth plugin is asked first."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = settings.enable_auth
        self._tenants = {digest(k): t for k, t in settings.api_keys().items()}

    @hookimpl(trylast=True)
    def faissx_authenticate(
        self, api_key: str | None, tenant: str | None, settings: ServerSettings
    ) -> Principal:
        if not self.enabled:
            return Principal(tenant=check_name(tenant, "tenant id") if tenant else DEFAULT_TENANT)
        if not api_key:
            raise Unauthenticated("this server requires an API key")
        key = digest(api_key)
        owner = None
        for stored, tenant_of_key in self._tenants.items():
            if hmac.compare_digest(key, stored):
                owner = tenant_of_key
        if owner is None:
            raise Unauthenticated("unknown API key")
        if tenant and tenant != owner:
            raise PermissionDenied("this API key does not belong to the requested tenant")
        return Principal(tenant=owner)
