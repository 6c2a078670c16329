"""Tenants of one gateway: API keys, names in the shared controller, and the per-tenant quotas checked at admission.

A tenant owns its functions, workflows, invocations and usage. Keys are random (`new_key`: 192 bits from
`secrets`), shown once and stored only as SHA-256 hashes (a fast hash is enough for keys of this entropy:
no dictionary to try, unlike passwords; the same choice as GitHub's token scanning and Stripe's API keys).
The tenant `default` holds the admin key, which `gpufaas up` writes to `<data-dir>/admin.key` (mode 0600);
the admin may also create, list, change and remove tenants (`/v1/tenants`).

Names: the controller is shared, so a tenant's function or workflow `NAME` is `TENANT/NAME` there
(`qualify`), except for the default tenant, whose names stay as they are (stores written before tenants
existed keep working). '/' is not allowed in names (specs.NAME_RE), so the mapping cannot collide.

Who calls it: `gateway.service.Platform` (keys at start, quotas at admission, names everywhere),
`gateway.http_io.auth_middleware` (key -> tenant), the tenant routes.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from gpufaas.platform.errors import UserError
from gpufaas.platform.tenancy import TenantShare

DEFAULT_TENANT = "default"
TENANT_RE = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
_TENANT = re.compile(TENANT_RE)
KEY_PREFIX = "gf_"


def new_key() -> str:
    """A fresh API key: 'gf_' + 32 url-safe characters (24 random bytes, 192 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def key_hash(key: str) -> str:
    """What the store keeps of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant_name(name: str) -> str:
    """`name` if it is a valid tenant name, else UserError naming the rule."""
    if not _TENANT.fullmatch(name):
        raise UserError(f"tenant name {name!r}: use 1-32 lower-case letters, digits and '-', starting and ending with a letter or digit")
    return name


def qualify(tenant: str, name: str) -> str:
    """The controller's name of `tenant`'s function or workflow `name`."""
    return name if tenant == DEFAULT_TENANT else f"{tenant}/{name}"


def tenant_of(qualified: str) -> str:
    """The tenant of a controller name."""
    head, sep, _ = qualified.partition("/")
    return head if sep else DEFAULT_TENANT


def short(qualified: str) -> str:
    """The tenant's own name of a controller name."""
    return qualified.rpartition("/")[2]


class TenantExists(UserError):
    """Creating a tenant whose name is taken (409)."""


class Limits(BaseModel):
    """A tenant's weight and quotas (None: no limit). Who sets them: `gpufaas tenant create|set`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description="fair-share weight under contention")
    max_share_units: int | None = Field(None, ge=1, le=1_000_000, description="GPU share units the tenant's instances may hold")
    max_concurrency: int | None = Field(None, ge=1, le=1_000_000, description="invocations in flight at once")
    rate_rps: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False, description="invocations admitted per second (token bucket)")

    def share(self) -> TenantShare:
        """What the controller enforces of these limits (`Controller.set_tenants`): the weight and the share cap.
        Who calls it: the gateway and the simulator; rate and concurrency are admission, not the controller's."""
        return TenantShare(self.weight, self.max_share_units)


@dataclass(frozen=True)
class Tenant:
    """One tenant as the gateway knows it (never its key)."""

    name: str
    admin: bool
    limits: Limits = field(default_factory=Limits)

    def doc(self) -> dict:
        """The tenant as the API shows it."""
        return {"name": self.name, "admin": self.admin, **self.limits.model_dump()}



class QuotaExceeded(Exception):
    """An invocation refused at admission: which limit, and when to retry (seconds, >= 1)."""

    def __init__(self, limit: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class Admission:
    """Per-tenant admission state: a token bucket for `rate_rps` and a count of invocations in flight.

    Who calls it: `Platform.invoke` / `invoke_async` (`admit` before submitting, `release` when the
    invocation ends). Times are the gateway clock's nanoseconds. Nothing admitted is ever dropped here:
    a refusal happens before any work is done."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[float, int]] = {}  # tenant -> (tokens, at_ns)
        self.inflight: dict[str, int] = {}

    def admit(self, tenant: Tenant, now_ns: int, mean_latency_s: float) -> None:
        """Count one invocation in, or raise QuotaExceeded (the caller answers 429 with Retry-After)."""
        lim = tenant.limits
        busy = self.inflight.get(tenant.name, 0)
        if lim.max_concurrency is not None and busy >= lim.max_concurrency:
            # NOTE: a slot frees when one of the tenant's invocations ends: about its mean latency from now.
            raise QuotaExceeded("max_concurrency", f"tenant {tenant.name!r} has {busy} invocations in flight, its max_concurrency "
                                                   f"is {lim.max_concurrency}; retry later or raise it (gpufaas tenant set)", mean_latency_s)
        if lim.rate_rps is not None:
            # the bucket holds up to one second of requests (at least one), refilled at rate_rps
            burst = max(1.0, lim.rate_rps)
            tokens, at_ns = self._tokens.get(tenant.name, (burst, now_ns))
            tokens = min(burst, tokens + (now_ns - at_ns) / 1e9 * lim.rate_rps)
            if tokens < 1.0:
                self._tokens[tenant.name] = (tokens, now_ns)
                raise QuotaExceeded("rate_rps", f"tenant {tenant.name!r} is over its rate_rps of {lim.rate_rps:g}; "
                                                "retry later or raise it (gpufaas tenant set)", (1.0 - tokens) / lim.rate_rps)
            self._tokens[tenant.name] = (tokens - 1.0, now_ns)
        self.inflight[tenant.name] = busy + 1

    def release(self, tenant: str) -> None:
        """One of `tenant`'s admitted invocations ended."""
        self.inflight[tenant] = self.inflight.get(tenant, 1) - 1
