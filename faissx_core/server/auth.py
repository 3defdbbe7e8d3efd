"""The built-in key store: API key -> (tenant, role), a ``faissx_authenticate`` plugin.

Where keys come from: ``--auth-keys key:tenant,...`` (role ``admin``), or ``--auth-file`` /
``FAISSX_AUTH_FILE``, a JSON file in one of two forms::

    {"key1": "tenant1", "key2": "tenant2"}                       # role admin, as before
    {"keys": [{"key": "...", "tenant": "t1", "role": "read"},
              {"key_hash": "scrypt$n=16384,r=8,p=1,id=fx_1a2b3c4d$<salt>$<hash>",
               "tenant": "t2", "role": "write"}]}

How they are kept: a clear key is reduced to its SHA-256 digest at load, so memory holds no key
in clear. A ``key_hash`` is a salted scrypt or PBKDF2 hash (``faissx keys add`` / ``faissx keys
hash`` make them) carrying its own salt and parameters, so the file can be read by anyone
without revealing a key. Every comparison is ``hmac.compare_digest``, against every candidate,
so timing says nothing about which key, or how much of one, matched. Keys are never logged.

Slow hashes are verified once per key and process: the SHA-256 digest of a key that verified is
remembered, so later requests cost one digest. Keys made by ``faissx keys add`` carry a public
id (``fx_<8 hex>_<secret>``) that the hash records, so a first request costs one slow hash, not
one per entry. Slow hashes of unknown keys are paid for from a small budget (a token bucket),
and recently refused keys are remembered, so a flood of wrong keys cannot tie up the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faissx_core.errors import PermissionDenied, Unauthenticated
from faissx_core.hookspecs import hookimpl
from faissx_core.server.limits import TokenBucket
from faissx_core.settings import ServerSettings
from faissx_core.tenancy import DEFAULT_TENANT, Principal, Role, check_name

ROLES: tuple[Role, ...] = ("admin", "write", "read")
#: Parameters of new hashes: scrypt at 16 MiB and about 40 ms on one core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
PBKDF2_ITERATIONS = 600_000
#: Slow-hash verifications of not-yet-known keys: burst, then per second.
VERIFY_BURST, VERIFY_RATE = 32, 4.0
#: Recently refused key digests remembered (a client retrying a wrong key costs one digest).
REFUSED_MEMORY = 4096
_KEY_ID = re.compile(r"(fx_[0-9a-f]{8})_")


def digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode("utf-8")).digest()


def key_id_of(api_key: str) -> str | None:
    """The public id of a key made by ``faissx keys add`` (``fx_<8 hex>``), else None."""
    match = _KEY_ID.match(api_key)
    return match.group(1) if match else None


def new_key() -> str:
    """A fresh API key: a public id and 256 random bits, ``fx_<id>_<secret>``."""
    return f"fx_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


# -- salted slow hashes ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class KeyHash:
    """A parsed hash string ``<algorithm>$<param=value,...>$<salt>$<hash>`` (base64url)."""

    algorithm: Literal["scrypt", "pbkdf2_sha256"]
    params: dict[str, int]
    salt: bytes
    hash: bytes
    key_id: str | None = None

    def derive(self, api_key: str) -> bytes:
        secret = api_key.encode("utf-8")
        if self.algorithm == "scrypt":
            n, r, p = self.params["n"], self.params["r"], self.params["p"]
            return hashlib.scrypt(
                secret,
                salt=self.salt,
                n=n,
                r=r,
                p=p,
                maxmem=256 * n * r + (1 << 20),
                dklen=len(self.hash),
            )
        return hashlib.pbkdf2_hmac(
            "sha256", secret, self.salt, self.params["i"], dklen=len(self.hash)
        )

    def verify(self, api_key: str) -> bool:
        return hmac.compare_digest(self.derive(api_key), self.hash)

    def __str__(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        if self.key_id:
            params += f",id={self.key_id}"
        return f"{self.algorithm}${params}${_b64(self.salt)}${_b64(self.hash)}"


#: Accepted parameter ranges: a hash file is trusted, but a typo must not cost a gigabyte.
_LIMITS = {
    "scrypt": {"n": (2, 1 << 20), "r": (1, 32), "p": (1, 16)},
    "pbkdf2_sha256": {"i": (1000, 10_000_000)},
}


def parse_hash(text: str) -> KeyHash:
    """Parse and bound-check a hash string; ValueError says what is wrong (never the key)."""
    parts = text.split("$") if isinstance(text, str) else []
    if len(parts) != 4 or parts[0] not in _LIMITS:
        raise ValueError("a key hash reads <scrypt|pbkdf2_sha256>$<params>$<salt>$<hash>")
    algorithm, raw_params, salt, hashed = parts
    params: dict[str, int] = {}
    key_id = None
    for item in filter(None, raw_params.split(",")):
        name, _, value = item.partition("=")
        if name == "id" and _KEY_ID.fullmatch(value + "_"):
            key_id = value
        elif name in _LIMITS[algorithm] and value.isdigit():
            params[name] = int(value)
        else:
            raise ValueError(f"unknown or malformed {algorithm} parameter {item!r}")
    for name, (low, high) in _LIMITS[algorithm].items():
        if not low <= params.get(name, -1) <= high:
            raise ValueError(f"{algorithm} parameter {name} must be in [{low}, {high}]")
    if algorithm == "scrypt" and params["n"] & (params["n"] - 1):
        raise ValueError("scrypt parameter n must be a power of two")
    try:
        salt_b, hash_b = _unb64(salt), _unb64(hashed)
    except (ValueError, TypeError):
        raise ValueError("key hash salt and hash must be base64url") from None
    if len(salt_b) < 8 or not 16 <= len(hash_b) <= 64:
        raise ValueError("key hash needs a salt of 8+ bytes and a hash of 16-64 bytes")
    return KeyHash(algorithm, params, salt_b, hash_b, key_id)  # type: ignore[arg-type]


def hash_key(api_key: str, algorithm: str = "scrypt") -> str:
    """A salted hash string for ``api_key``, with its salt and parameters inside."""
    params = (
        {"n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        if algorithm == "scrypt"
        else {"i": PBKDF2_ITERATIONS}
    )
    salt = secrets.token_bytes(16)
    probe = KeyHash(algorithm, params, salt, bytes(32))  # type: ignore[arg-type]
    return str(
        KeyHash(
            algorithm,  # type: ignore[arg-type]
            params,
            salt,
            probe.derive(api_key),
            key_id_of(api_key),
        )
    )


# -- the key file ------------------------------------------------------------------------------


class KeyEntry(BaseModel):
    """One entry of the rich file form: a clear ``key`` or a ``key_hash``, a tenant, a role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(None, min_length=1, repr=False)
    key_hash: str | None = None
    tenant: str
    role: Role

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, tenant: str) -> str:
        return check_name(tenant, "tenant id")

    @field_validator("key_hash")
    @classmethod
    def _hash(cls, text: str | None) -> str | None:
        if text is not None:
            parse_hash(text)
        return text

    @model_validator(mode="after")
    def _one_key(self) -> KeyEntry:
        if (self.key is None) == (self.key_hash is None):
            raise ValueError("give exactly one of key and key_hash")
        return self


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KeyEntry]


def read_key_file(path: Path) -> list[KeyEntry]:
    """Entries of an auth file in either form. Errors name the entry, never a key."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # a JSON error's text quotes no input, only a position
        raise ValueError(
            f"cannot read auth file {path}: {type(exc).__name__}: {getattr(exc, 'msg', exc)}"
        ) from None
    if isinstance(data, dict) and "keys" in data and isinstance(data["keys"], list):
        try:
            return KeyFile.model_validate(data).keys
        except ValidationError as exc:
            err = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            raise ValueError(
                f"auth file {path}: {where}: {str(err.get('msg')).removeprefix('Value error, ')}"
            ) from None
    if isinstance(data, dict) and all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in data.items()
    ):
        for number, tenant in enumerate(data.values(), 1):
            try:
                check_name(tenant, "tenant id")
            except ValueError as exc:
                raise ValueError(f"auth file {path}: entry #{number}: {exc}") from None
        return [KeyEntry(key=k, tenant=t, role="admin") for k, t in data.items()]
    raise ValueError(
        f'auth file {path} must be {{"key": "tenant", ...}} or '
        '{"keys": [{"key" or "key_hash": ..., "tenant": ..., "role": ...}]}'
    )


def load_entries(settings: ServerSettings) -> list[KeyEntry]:
    if settings.auth_file is not None:
        return read_key_file(settings.auth_file)
    return [KeyEntry(key=k, tenant=t, role="admin") for k, t in settings.auth_keys.items()]


# -- the plugin --------------------------------------------------------------------------------


class KeyStore:
    """Registered by the server; answers last so any other auth plugin is asked first."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = settings.enable_auth
        #: Who a request without a tenant is when auth is off (made once, not per request).
        self._anonymous = Principal(tenant=DEFAULT_TENANT)
        entries = load_entries(settings)
        #: (sha256 of a clear key, principal): compared in full, every time
        self._clear = [
            (digest(e.key), Principal(tenant=e.tenant, role=e.role))
            for e in entries
            if e.key is not None
        ]
        self._hashed: list[tuple[KeyHash, Principal]] = [
            (parse_hash(e.key_hash), Principal(tenant=e.tenant, role=e.role))
            for e in entries
            if e.key_hash is not None
        ]
        #: sha256 of keys whose slow hash verified -> principal
        self._verified: dict[bytes, Principal] = {}
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._budget = TokenBucket(VERIFY_RATE, VERIFY_BURST)
        self._lock = threading.Lock()

    @hookimpl(trylast=True)
    def faissx_authenticate(
        self, api_key: str | None, tenant: str | None, settings: ServerSettings
    ) -> Principal:
        if not self.enabled:
            if not tenant:
                return self._anonymous
            return Principal(tenant=check_name(tenant, "tenant id"))
        if not api_key:
            raise Unauthenticated("API key required: this server requires an API key")
        owner = self.lookup(api_key)
        if owner is None:
            raise Unauthenticated("Invalid API key: unknown API key")
        if tenant and tenant != owner.tenant:
            raise PermissionDenied("this API key does not belong to the requested tenant")
        return owner

    def lookup(self, api_key: str) -> Principal | None:
        key = digest(api_key)
        found = None
        with self._lock:
            for stored, principal in [*self._clear, *self._verified.items()]:
                if hmac.compare_digest(key, stored):  # no early exit: constant work per key
                    found = principal
            if found is not None or not self._hashed:
                return found
            if key in self._refused:
                self._refused.move_to_end(key)
                return None
            wanted = key_id_of(api_key)
            candidates = [(h, p) for h, p in self._hashed if h.key_id in (None, wanted)]
            if not candidates:
                self._refuse(key)
                return None
            if not self._budget.take(len(candidates)):
                raise Unauthenticated(
                    "too many requests with unknown API keys; try again in a few seconds"
                )
            for hashed, principal in candidates:
                if hashed.verify(api_key):
                    self._verified[key] = principal
                    return principal
            self._refuse(key)
            return None

    def _refuse(self, key: bytes) -> None:
        self._refused[key] = None
        if len(self._refused) > REFUSED_MEMORY:
            self._refused.popitem(last=False)
        return None
