"""The live dashboard: GET /ui (the page), /ui/state (its JSON, polled every second), /ui/static/{name}
(its script and style sheet); the admin's browser sessions; the ring buffer of periodic samples.

Who calls it: `routes.add_routes` mounts the routes, `gateway.app.create_app` calls `attach(app)` (the
per-app `Dashboard` and its sampler task), and `http_io.auth_middleware` hands a /ui request that carries no
bearer key to `browser_auth`. What it changes: only its own sessions and samples; it reads the platform.

Login, as Jupyter does it: `/ui?token=KEY` with the admin key creates a session (a random id held in memory,
mapped to the tenant; the key itself is never kept, echoed or put in the cookie), sets it as an HttpOnly,
SameSite=Strict cookie and redirects to `/ui` (the token leaves the address bar). The /ui routes accept that
cookie or the usual bearer key; a tenant key gets 403. `gpufaas ui` prints and opens the login address.

History: every SAMPLE_PERIOD_S the sampler copies the controller's accounting counters (per-workflow ended
and SLO hits, cost, decision count and time, queued jobs) into a ring of HISTORY_S / SAMPLE_PERIOD_S
samples; /ui/state derives the windowed figures and the series from differences of those counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import secrets
from collections import deque
from importlib import resources
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

from aiohttp import web

from gpufaas.gateway.http_io import PLATFORM, TENANT, ApiError, admin_only
from gpufaas.gateway.tenants import Tenant
from gpufaas.platform.controller import Controller
from gpufaas.platform.units import NS_PER_S

log = logging.getLogger("gpufaas.gateway")

UI_PATH = "/ui"
COOKIE = "gpufaas_ui"
SAMPLE_PERIOD_S = 1.0
HISTORY_S = 300  # the ring holds the last five minutes
RATE_WINDOW_S = 5  # decisions per second and decision time: over the last few samples
SERIES_WINDOW_S = 10  # a point of the SLO-hit series: invocations ended in the 10 s before it
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256
# the static files a page may load, and their types; anything else is a 404 (no path ever reaches the disk)
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
# NOTE: the page loads only its own files: a strict CSP makes a stray outside URL an error in the browser's
# console (the browser test fails on it), and frame-ancestors keeps the dashboard out of other sites' frames.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sample(NamedTuple):
    """The accounting's counters at one instant (cumulative since the gateway started)."""

    t_ns: int
    decisions: int  # policy calls (the decision_us histogram's count)
    decision_us_total: float
    allocated_usd: float
    busy_usd: float
    queued: int  # jobs waiting in every stage queue
    per_workflow: dict[str, tuple[int, int]]  # controller workflow name -> (ended, SLO hits)


def take_sample(ctl: Controller) -> Sample:
    """Copy the counters of `ctl`'s accounting; cost with the live instances billed up to now, as the
    controller's `report()` bills them (`Accounting.cost`). Changes nothing.

    NOTE: it reads the controller's accounting directly (read-only) rather than through the `Platform` facade:
    the dashboard needs the raw counters (decision count and total time, ended and hits per workflow), which
    no facade document carries unrounded, and differences of rounded rates would drift. It skips `report()`'s
    quantiles, which the sampler does not keep."""
    acct = ctl.acct
    now_ns = ctl.clock.now_ns()
    cost = acct.cost(ctl.instances.values(), now_ns)
    return Sample(now_ns, acct.decision_us.n, acct.decision_us.total, cost.allocated_usd, cost.busy_usd,
                  sum(len(s.queue.jobs) for wf in ctl.workflows.values() for s in wf.stages),
                  {name: (v[0], v[1]) for name, v in acct.per_workflow.items()})


def _rate(num: float, den: float, ndigits: int = 4) -> float | None:
    return round(num / den, ndigits) if den > 0 else None


def _ended_hits(a: Sample, b: Sample, wf: str) -> tuple[int, int]:
    """Invocations of `wf` that ended between samples a and b (a older), and how many of them met the SLO."""
    ea, ha = a.per_workflow.get(wf, (0, 0))
    eb, hb = b.per_workflow.get(wf, (0, 0))
    return eb - ea, hb - ha


class Dashboard:
    """One gateway's dashboard state: the browser sessions and the ring of samples.

    Who calls it: the /ui handlers and `browser_auth` (sessions, `state_doc`), the sampler task (`record`)."""

    def __init__(self, period_s: float = SAMPLE_PERIOD_S, history_s: float = HISTORY_S) -> None:
        self.period_s = period_s
        self.samples: deque[Sample] = deque(maxlen=max(2, int(history_s / period_s)))
        self._sessions: dict[str, tuple[str, int]] = {}  # session id -> (tenant name, expiry in clock ns)

    # ---------------------------------------------------------------- sessions

    def login(self, tenant: str, now_ns: int) -> str:
        """A new session for `tenant`; returns its id (256 random bits). Drops expired sessions, and the oldest
        when MAX_SESSIONS are open."""
        for sid in [s for s, (_, exp) in self._sessions.items() if exp <= now_ns]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = (tenant, now_ns + SESSION_TTL_S * NS_PER_S)
        return sid

    def session_tenant(self, sid: str | None, now_ns: int) -> str | None:
        """The tenant name of a live session `sid`, or None (unknown, expired or no cookie)."""
        entry = self._sessions.get(sid) if sid else None
        if entry is None or entry[1] <= now_ns:
            return None
        return entry[0]

    # ---------------------------------------------------------------- history

    def record(self, s: Sample) -> None:
        """Append one sample to the ring (the oldest falls out)."""
        self.samples.append(s)

    def state_doc(self, now: Sample, report: dict, cluster: dict) -> dict:
        """GET /ui/state: `cluster` (the admin's `cluster_doc`) arranged per GPU, the queues, and per workflow
        and for the policy the figures of the ring's window ending at `now` (a sample not stored)."""
        ring = [s for s in self.samples if s.t_ns < now.t_ns] + [now]
        base = ring[0]
        window_s = (now.t_ns - base.t_ns) / NS_PER_S
        recent = ring[max(0, len(ring) - 1 - int(RATE_WINDOW_S / self.period_s))]
        dt_recent_s = (now.t_ns - recent.t_ns) / NS_PER_S
        per_wf_total = report["per_workflow"]
        workflows = []
        for wf in sorted(set(now.per_workflow) | set(per_wf_total)):
            ended, hits = _ended_hits(base, now, wf)
            workflows.append({"name": wf, "ended": ended, "slo_hit_rate": _rate(hits, ended),
                              "total_ended": per_wf_total.get(wf, {}).get("invocations", 0),
                              "total_slo_hit_rate": per_wf_total.get(wf, {}).get("slo_hit_rate", 0.0)})
        insts = {i["id"]: i for i in cluster["instances"]}
        gpus = [{**{k: g[k] for k in ("id", "node", "type", "share_units", "free_units", "memory_mb", "free_mb")},
                 "instances": [{"id": i["id"], "function": i["function"], "share": i["share"], "backlog": i["backlog"],
                                "state": "cold-starting" if i["state"] == "starting" else i["state"], "stopping": i["stopping"]}
                               for i in (insts[iid] for iid in g["instances"] if iid in insts)]}
                for g in cluster["gpus"]]
        return {
            "policy": cluster["policy"], "backend": cluster["backend"], "execute": cluster["execute"],
            "window_s": round(window_s, 3), "inflight": cluster["inflight"], "gpus": gpus, "queues": cluster["queues"],
            "workflows": workflows,
            "cost": {"window_allocated_usd": round(now.allocated_usd - base.allocated_usd, 6),
                     "window_busy_usd": round(now.busy_usd - base.busy_usd, 6),
                     "allocated_usd": report["cost"]["allocated_usd"], "busy_usd": report["cost"]["busy_usd"]},
            "decisions": {"per_s": _rate(now.decisions - recent.decisions, dt_recent_s, 2),
                          "mean_us": _rate(now.decision_us_total - recent.decision_us_total, now.decisions - recent.decisions, 2),
                          "p50_us": report["decision_us"]["p50"], "p99_us": report["decision_us"]["p99"],
                          "total": now.decisions, "refused": report["refused_decisions"]},
            "totals": {k: report[k] for k in ("invocations", "completed", "failed", "rejected", "timed_out", "slo_hit_rate", "cold_starts")},
            "series": self._series(ring, [w["name"] for w in workflows]),
        }

    def _series(self, ring: list[Sample], workflows: list[str]) -> dict:
        """Per sample interval of the ring: decisions per second, mean decision time, queued jobs, cost per hour,
        and each workflow's SLO hit over the SERIES_WINDOW_S before it (None where nothing ended)."""
        t_s, per_s, mean_us, queued, usd_h = [], [], [], [], []
        hit: dict[str, list[float | None]] = {wf: [] for wf in workflows}
        back = max(1, int(SERIES_WINDOW_S / self.period_s))
        now_ns = ring[-1].t_ns
        for i in range(1, len(ring)):
            a, b = ring[i - 1], ring[i]
            dt_s = (b.t_ns - a.t_ns) / NS_PER_S
            t_s.append(round((b.t_ns - now_ns) / NS_PER_S, 3))
            per_s.append(_rate(b.decisions - a.decisions, dt_s, 2))
            mean_us.append(_rate(b.decision_us_total - a.decision_us_total, b.decisions - a.decisions, 2))
            queued.append(b.queued)
            usd_h.append(_rate((b.allocated_usd - a.allocated_usd) * 3600, dt_s, 4))
            w0 = ring[max(0, i - back)]
            for wf in workflows:
                ended, hits = _ended_hits(w0, b, wf)
                hit[wf].append(_rate(hits, ended))
        return {"t_s": t_s, "decisions_per_s": per_s, "decision_mean_us": mean_us, "queued": queued,
                "allocated_usd_per_h": usd_h, "slo_hit": hit}


DASHBOARD = web.AppKey("dashboard", Dashboard)


async def _sample_forever(dash: Dashboard, app: web.Application) -> None:
    plat = app[PLATFORM]
    while True:
        try:
            dash.record(take_sample(plat.ctl))
        except Exception:  # noqa: BLE001 (keep the sampler alive; the cause is logged)
            log.exception("dashboard sample failed")
        await asyncio.sleep(dash.period_s)


async def _sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_sample_forever(app[DASHBOARD], app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def attach(app: web.Application) -> None:
    """Give `app` its dashboard and sampler. Called by `create_app` after the platform's cleanup context, so
    the sampler starts once the controller exists and stops before the platform closes."""
    app[DASHBOARD] = Dashboard()
    app.cleanup_ctx.append(_sampler_ctx)


# ---------------------------------------------------------------- auth


def _wants_html(request: web.Request) -> bool:
    """A browser asking for the page (its Accept names text/html): errors come back as a small HTML page."""
    return request.path == UI_PATH and "text/html" in request.headers.get("Accept", "")


def _html_page(status: int, title: str, body_html: str) -> web.Response:
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<link rel=icon href='data:,'></head><body><h1>{html.escape(title)}</h1>{body_html}</body></html>")
    return web.Response(text=page, status=status, content_type="text/html", headers={**_NO_STORE, "Content-Security-Policy": _CSP})


_HOW_TO_LOG_IN = ("<p>Open the address that <code>gpufaas ui</code> prints, or <code>/ui?token=ADMIN_KEY</code> with the "
                  "admin key from <code>&lt;data-dir&gt;/admin.key</code>. The key is exchanged for a session cookie and "
                  "leaves the address bar.</p>")


def _deny(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """401/403: an HTML page for a browser on /ui, else the JSON error body (raised)."""
    if _wants_html(request):
        return _html_page(status, "gpufaas dashboard: " + ("log in" if status == 401 else "admin key only"),
                          f"<p>{html.escape(message)}</p>{_HOW_TO_LOG_IN}")
    raise ApiError(status, code, message)


def _login(request: web.Request) -> web.Response:
    """/ui?token=KEY: the admin key starts a session (cookie) and redirects to /ui; 401 for an unknown key,
    403 for a tenant's. The key is never echoed."""
    plat = request.app[PLATFORM]
    key = request.query.get("token", "").strip()
    tenant = plat.tenant_for_key(key) if key else None
    if tenant is None:
        return _deny(request, 401, "unauthorized", "unknown token; the dashboard takes the gateway's admin key")
    if not tenant.admin:
        return _deny(request, 403, "forbidden", "the dashboard is for the admin key only; this is a tenant's key")
    sid = request.app[DASHBOARD].login(tenant.name, plat.clock.now_ns())
    resp = web.Response(status=303, headers={**_NO_STORE, "Location": UI_PATH})
    # NOTE: Path=/ui keeps the cookie off the API routes (they take only the bearer key, so a cookie there could
    # never authorise a cross-site request); SameSite=Strict keeps it off requests other sites start.
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path=UI_PATH, secure=request.secure)
    return resp


async def browser_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The /ui routes' authentication when no bearer key came (called by `http_io.auth_middleware`): a token
    login on /ui, else the session cookie sets `request[TENANT]`; without either, 401."""
    if request.path == UI_PATH and "token" in request.query:
        return _login(request)
    plat = request.app[PLATFORM]
    name = request.app[DASHBOARD].session_tenant(request.cookies.get(COOKIE), plat.clock.now_ns())
    tenant = plat.tenants.get(name) if name else None
    if tenant is None:
        return _deny(request, 401, "unauthorized", "the dashboard needs a login: open /ui?token=ADMIN_KEY "
                                                   "(gpufaas ui prints it) or send 'Authorization: Bearer <admin key>'")
    request[TENANT] = tenant
    return await handler(request)


# ---------------------------------------------------------------- handlers


def _static_bytes(name: str) -> bytes:
    return (resources.files("gpufaas.gateway") / "ui" / name).read_bytes()


async def get_page(request: web.Request) -> web.Response:
    """GET /ui: the dashboard page (admin only). With ?token=KEY (also alongside a bearer key): the login."""
    if "token" in request.query:
        return _login(request)
    tenant: Tenant = request[TENANT]
    if not tenant.admin:
        return _deny(request, 403, "forbidden", "the dashboard is for the admin key only")
    return web.Response(body=_static_bytes("index.html"), content_type="text/html", charset="utf-8",
                        headers={**_NO_STORE, "Content-Security-Policy": _CSP})


async def get_state(request: web.Request) -> web.Response:
    """GET /ui/state: what the page shows, as JSON (admin only)."""
    tenant = admin_only(request)
    plat = request.app[PLATFORM]
    doc = request.app[DASHBOARD].state_doc(take_sample(plat.ctl), plat.ctl.report(), plat.cluster_doc(tenant))
    return web.json_response(doc, headers=_NO_STORE)


async def get_static(request: web.Request) -> web.Response:
    """GET /ui/static/{name}: the page's script and style sheet (admin only, like the page)."""
    admin_only(request)
    name = request.match_info["name"]
    ctype = STATIC.get(name)
    if ctype is None:
        raise ApiError(404, "not_found", f"no dashboard file {name[:60]!r}; the page loads {', '.join(sorted(STATIC))}")
    return web.Response(body=_static_bytes(name), content_type=ctype, charset="utf-8", headers=_NO_STORE)


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the dashboard's routes."""
    router.add_get(UI_PATH, get_page)
    router.add_get(UI_PATH + "/state", get_state)
    router.add_get(UI_PATH + "/static/{name}", get_static)
