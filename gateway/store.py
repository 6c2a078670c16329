"""The gateway's durable state in SQLite (stdlib sqlite3, WAL): deployments and async invocations.

What it keeps: the tenants (names, key hashes, limits), every deployed function (its spec as JSON and its bundle files), every deployed workflow
(spec as JSON), and every async invocation (accepted -> its final result or failure). After a restart
the gateway redeploys what is here, and `recover()` ends every async invocation that was still pending
as failed with a reason, so an id accepted before the restart never answers "unknown".

Who calls it: the gateway's routes and its platform context (app.py); the tests. One connection, used
only from the event loop's thread.

Faults: a write that fails on the disk (full, read-only, I/O error, locked) raises `StoreUnavailable`, an
HTTP 503 whose message names the file, the cause and what to do; SQLite rolls the statement or
transaction back, so nothing is half-written, and the next call succeeds once the cause is gone. A file
that is not a readable store at start raises `StoreCorrupt` (a UserError: one line, exit 2 from
`gpufaas up`) before anything is written to it.

Retention: a finished async invocation is kept `result_retention_s` (then answers 404, as an unknown id).
NOTE: its age is measured by SQLite's own clock (`julianday('now')`), the one wall-clock read of the
gateway: retention spans restarts, which the loop's monotonic clock does not.

NOTE: calls are synchronous. Each is one small statement on a local file in WAL mode with
synchronous=NORMAL (tens of microseconds); an executor hop would cost more than the write, and
sqlite3 connections are not shared across threads anyway.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

from aiohttp import web

from gpufaas.platform.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bundle_files (function TEXT NOT NULL, path TEXT NOT NULL, content BLOB NOT NULL,
    PRIMARY KEY (function, path));
CREATE TABLE IF NOT EXISTS workflows (name TEXT PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL,
    result TEXT, reason TEXT NOT NULL DEFAULT '', tenant TEXT NOT NULL DEFAULT 'default');
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, admin INTEGER NOT NULL DEFAULT 0,
    limits TEXT NOT NULL DEFAULT '{}', seq INTEGER NOT NULL);
"""

RESTART_REASON = "gateway restarted before it finished"
DAY_S = 86400.0
PURGE_EVERY = 256  # expired results are deleted every this many new async invocations (and at start)

_CAUSES = {  # SQLite primary result code -> (cause, what to do)
    "SQLITE_FULL": ("the disk is full", "free space on its disk; the gateway recovers by itself"),
    "SQLITE_READONLY": ("the store or its folder is read-only", "make the data dir writable again"),
    "SQLITE_IOERR": ("a disk I/O error", "check the disk (dmesg); the gateway retries on the next request"),
    "SQLITE_CANTOPEN": ("the file cannot be opened", "check that the data dir exists and is writable"),
    "SQLITE_BUSY": ("another process holds the store locked", "stop the other gateway using this data dir"),
    "SQLITE_LOCKED": ("another process holds the store locked", "stop the other gateway using this data dir"),
    "SQLITE_CORRUPT": ("the file is corrupt", "stop the gateway and restore the store from a backup"),
    "SQLITE_NOTADB": ("the file is not an SQLite database", "stop the gateway and restore the store from a backup"),
}


def _cause(e: sqlite3.Error) -> tuple[str, str]:
    name = (e.sqlite_errorname or "").split("_")
    key = "_".join(name[:2]) if len(name) >= 2 else ""
    return _CAUSES.get(key, (str(e), "check the data dir and the gateway log"))


class StoreUnavailable(web.HTTPServiceUnavailable):
    """The store cannot be read or written now (disk full, read-only, I/O error): HTTP 503 with the cause.

    NOTE: an aiohttp HTTP error, so every route that touches the store answers 503 through the error
    middleware with no wrapping at each call site; nothing was changed (SQLite rolled back)."""

    def __init__(self, path: Path, e: sqlite3.Error) -> None:
        cause, todo = _cause(e)
        self.cause = cause
        super().__init__(text=f"the gateway's store {path} cannot be used: {cause} ({e.sqlite_errorname or e}); "
                              f"nothing was changed; {todo}, then retry")


class StoreCorrupt(UserError):
    """At start: the store file cannot be opened as a gpufaas store (one line naming it and what to do)."""


T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn an SQLite failure in a Store method into `StoreUnavailable` (503)."""

    @functools.wraps(method)
    def wrapper(self: "Store", *args: Any, **kw: Any) -> T:
        try:
            return method(self, *args, **kw)
        except sqlite3.Error as e:
            if self.db.in_transaction:
                try:
                    self.db.rollback()
                except sqlite3.Error:
                    pass
            raise StoreUnavailable(self.path, e) from None

    return wrapper


class Store:
    """One SQLite file (mode 0600). Methods commit before they return; a failing one raises StoreUnavailable."""

    def __init__(self, path: str | Path, *, result_retention_s: float = DAY_S) -> None:
        self.path = Path(path)
        self.retention_days = result_retention_s / DAY_S
        self._added = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreCorrupt(f"{self.path.parent}: cannot create the data dir: {e.strerror}; pick another --data-dir") from None
        existed = self.path.exists()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # NOTE: checked before anything is written (WAL switch, schema): a bad file is left as it was
            bad = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")] if existed else ["ok"]
        except sqlite3.Error as e:
            if e.sqlite_errorname in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise self._refuse(str(e)) from None
            raise self._cannot_open(e) from None
        if bad != ["ok"]:
            self.db.close()
            raise self._refuse("; ".join(bad))
        try:
            if not existed:
                self.path.chmod(0o600)  # the store holds key hashes and bundles: no other uid may read it
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            cols = {row[1] for row in self.db.execute("PRAGMA table_info(invocations)")}
            if "tenant" not in cols:  # a store written before tenants existed: its invocations are the default tenant's
                self.db.execute("ALTER TABLE invocations ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'")
            if "finished_at" not in cols:  # julianday of the end; NULL for rows written before retention existed
                self.db.execute("ALTER TABLE invocations ADD COLUMN finished_at REAL")
            self.purge_expired()
        except (sqlite3.Error, OSError) as e:
            self.db.close()
            raise self._cannot_open(e) from None

    def _cannot_open(self, e: sqlite3.Error | OSError) -> StoreCorrupt:
        if os.statvfs(self.path.parent).f_flag & os.ST_RDONLY:
            cause = "its folder is on a read-only file system"
        else:
            cause = _cause(e)[0] if isinstance(e, sqlite3.Error) else str(e.strerror)
        return StoreCorrupt(f"{self.path}: cannot open the store: {cause}; fix the data dir (space, permissions, "
                            "read-only mount) and start again")

    def _refuse(self, why: str) -> StoreCorrupt:
        return StoreCorrupt(f"{self.path}: not a readable gpufaas store ({why}); nothing was written to it: move it aside "
                            "(or restore a backup) and start again, the gateway then creates a new, empty store")

    def close(self) -> None:
        """Close the connection (the gateway's cleanup does it)."""
        self.db.close()

    # ------------------------------------------------------------------ deployments

    def _next_seq(self, table: str) -> int:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()  # noqa: S608 (fixed names)
        return int(row[0])

    @_guarded
    def put_function(self, name: str, spec: dict, files: dict[str, bytes]) -> None:
        """Insert or replace a function and its bundle files, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            old = self.db.execute("SELECT seq FROM functions WHERE name=?", (name,)).fetchone()
            seq = old[0] if old else self._next_seq("functions")
            self.db.execute("INSERT OR REPLACE INTO functions (name, spec, seq) VALUES (?, ?, ?)", (name, json.dumps(spec), seq))
            self.db.execute("DELETE FROM bundle_files WHERE function=?", (name,))
            self.db.executemany("INSERT INTO bundle_files (function, path, content) VALUES (?, ?, ?)",
                                [(name, p, c) for p, c in sorted(files.items())])

    @_guarded
    def delete_function(self, name: str) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM functions WHERE name=?", (name,))
            self.db.execute("DELETE FROM bundle_files WHERE function=?", (name,))

    @_guarded
    def functions(self) -> list[tuple[str, dict, dict[str, bytes]]]:
        """(name, spec, files) in deployment order."""
        out = []
        for name, spec in self.db.execute("SELECT name, spec FROM functions ORDER BY seq").fetchall():
            files = {p: bytes(c) for p, c in self.db.execute("SELECT path, content FROM bundle_files WHERE function=?", (name,))}
            out.append((name, json.loads(spec), files))
        return out

    @_guarded
    def put_workflow(self, name: str, spec: dict) -> None:
        with self.db:
            self.db.execute("BEGIN")
            old = self.db.execute("SELECT seq FROM workflows WHERE name=?", (name,)).fetchone()
            seq = old[0] if old else self._next_seq("workflows")
            self.db.execute("INSERT OR REPLACE INTO workflows (name, spec, seq) VALUES (?, ?, ?)", (name, json.dumps(spec), seq))

    @_guarded
    def delete_workflow(self, name: str) -> None:
        self.db.execute("DELETE FROM workflows WHERE name=?", (name,))

    @_guarded
    def workflows(self) -> list[tuple[str, dict]]:
        """(name, spec) in deployment order."""
        return [(n, json.loads(s)) for n, s in self.db.execute("SELECT name, spec FROM workflows ORDER BY seq").fetchall()]

    # ------------------------------------------------------------------ async invocations

    @_guarded
    def add_invocation(self, inv_id: str, workflow: str, tenant: str = "default") -> None:
        """Record an accepted async invocation of `tenant` as pending (before the 202 goes out)."""
        self.db.execute("INSERT INTO invocations (id, workflow, status, tenant) VALUES (?, ?, 'pending', ?)", (inv_id, workflow, tenant))
        self._added += 1
        if self._added % PURGE_EVERY == 0:
            self.purge_expired()

    @_guarded
    def finish_invocation(self, inv_id: str, status: str, result: dict, reason: str = "") -> None:
        """Store an async invocation's final result (a JSON-able dict)."""
        self.db.execute("UPDATE invocations SET status=?, result=?, reason=?, finished_at=julianday('now') WHERE id=?",
                        (status, json.dumps(result), reason, inv_id))

    @_guarded
    def get_invocation(self, inv_id: str) -> dict[str, Any] | None:
        """{"id", "workflow", "status", "reason", "result", "tenant"} or None when the id was never accepted here,
        or its result is older than the retention period."""
        row = self.db.execute("SELECT id, workflow, status, result, reason, tenant FROM invocations WHERE id=? "
                              "AND (finished_at IS NULL OR finished_at >= julianday('now') - ?)", (inv_id, self.retention_days)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "workflow": row[1], "status": row[2], "result": json.loads(row[3]) if row[3] else None, "reason": row[4],
                "tenant": row[5]}

    @_guarded
    def recover(self, reason: str = RESTART_REASON) -> int:
        """At start-up: end every invocation left pending by the previous process as failed. Returns how many."""
        cur = self.db.execute("UPDATE invocations SET status='failed', reason=?, finished_at=julianday('now') WHERE status='pending'", (reason,))
        return cur.rowcount

    @_guarded
    def purge_expired(self) -> int:
        """Delete the finished async invocations older than the retention period. Returns how many."""
        cur = self.db.execute("DELETE FROM invocations WHERE finished_at < julianday('now') - ?", (self.retention_days,))
        return cur.rowcount

    # ------------------------------------------------------------------ tenants

    @_guarded
    def put_tenant(self, name: str, key_sha256: str | None, admin: bool, limits: dict) -> None:
        """Insert a tenant, or update one's limits (and its key hash when `key_sha256` is given)."""
        with self.db:
            self.db.execute("BEGIN")
            old = self.db.execute("SELECT seq, key_sha256 FROM tenants WHERE name=?", (name,)).fetchone()
            seq = old[0] if old else self._next_seq("tenants")
            khash = key_sha256 or (old[1] if old else None)
            if khash is None:
                raise ValueError(f"tenant {name!r}: a new tenant needs a key")
            self.db.execute("INSERT OR REPLACE INTO tenants (name, key_sha256, admin, limits, seq) VALUES (?, ?, ?, ?, ?)",
                            (name, khash, int(admin), json.dumps(limits), seq))

    @_guarded
    def delete_tenant(self, name: str) -> None:
        self.db.execute("DELETE FROM tenants WHERE name=?", (name,))

    @_guarded
    def tenants(self) -> list[tuple[str, str, bool, dict]]:
        """(name, key_sha256, admin, limits) in creation order."""
        return [(n, k, bool(a), json.loads(lim)) for n, k, a, lim in
                self.db.execute("SELECT name, key_sha256, admin, limits FROM tenants ORDER BY seq").fetchall()]

    @_guarded
    def count_invocations(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT COUNT(*) FROM invocations").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM invocations WHERE status=?", (status,)).fetchone()[0])
