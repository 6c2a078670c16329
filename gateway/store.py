"""The gateway's durable state in SQLite (stdlib sqlite3, WAL): deployments and async invocations.

What it keeps: every deployed function (its spec as JSON and its bundle files), every deployed workflow
(spec as JSON), and every async invocation (accepted -> its final result or failure). After a restart
the gateway redeploys what is here, and `recover()` ends every async invocation that was still pending
as failed with a reason, so an id accepted before the restart never answers "unknown".

Who calls it: the gateway's routes and its platform context (app.py); the tests. One connection, used
only from the event loop's thread.

NOTE: calls are synchronous. Each is one small statement on a local file in WAL mode with
synchronous=NORMAL (tens of microseconds); an executor hop would cost more than the write, and
sqlite3 connections are not shared across threads anyway.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bundle_files (function TEXT NOT NULL, path TEXT NOT NULL, content BLOB NOT NULL,
    PRIMARY KEY (function, path));
CREATE TABLE IF NOT EXISTS workflows (name TEXT PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL,
    result TEXT, reason TEXT NOT NULL DEFAULT '');
"""

RESTART_REASON = "gateway restarted before it finished"


class Store:
    """One SQLite file. Methods commit before they return."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection (the gateway's cleanup does it)."""
        self.db.close()

    # ------------------------------------------------------------------ deployments

    def _next_seq(self, table: str) -> int:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()  # noqa: S608 (fixed names)
        return int(row[0])

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

    def delete_function(self, name: str) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM functions WHERE name=?", (name,))
            self.db.execute("DELETE FROM bundle_files WHERE function=?", (name,))

    def functions(self) -> list[tuple[str, dict, dict[str, bytes]]]:
        """(name, spec, files) in deployment order."""
        out = []
        for name, spec in self.db.execute("SELECT name, spec FROM functions ORDER BY seq").fetchall():
            files = {p: bytes(c) for p, c in self.db.execute("SELECT path, content FROM bundle_files WHERE function=?", (name,))}
            out.append((name, json.loads(spec), files))
        return out

    def put_workflow(self, name: str, spec: dict) -> None:
        with self.db:
            self.db.execute("BEGIN")
            old = self.db.execute("SELECT seq FROM workflows WHERE name=?", (name,)).fetchone()
            seq = old[0] if old else self._next_seq("workflows")
            self.db.execute("INSERT OR REPLACE INTO workflows (name, spec, seq) VALUES (?, ?, ?)", (name, json.dumps(spec), seq))

    def delete_workflow(self, name: str) -> None:
        self.db.execute("DELETE FROM workflows WHERE name=?", (name,))

    def workflows(self) -> list[tuple[str, dict]]:
        """(name, spec) in deployment order."""
        return [(n, json.loads(s)) for n, s in self.db.execute("SELECT name, spec FROM workflows ORDER BY seq").fetchall()]

    # ------------------------------------------------------------------ async invocations

    def add_invocation(self, inv_id: str, workflow: str) -> None:
        """Record an accepted async invocation as pending (before the 202 goes out)."""
        self.db.execute("INSERT INTO invocations (id, workflow, status) VALUES (?, ?, 'pending')", (inv_id, workflow))

    def finish_invocation(self, inv_id: str, status: str, result: dict, reason: str = "") -> None:
        """Store an async invocation's final result (a JSON-able dict)."""
        self.db.execute("UPDATE invocations SET status=?, result=?, reason=? WHERE id=?",
                        (status, json.dumps(result), reason, inv_id))

    def get_invocation(self, inv_id: str) -> dict[str, Any] | None:
        """{"id", "workflow", "status", "reason", "result"} or None when the id was never accepted here."""
        row = self.db.execute("SELECT id, workflow, status, result, reason FROM invocations WHERE id=?", (inv_id,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "workflow": row[1], "status": row[2], "result": json.loads(row[3]) if row[3] else None, "reason": row[4]}

    def recover(self, reason: str = RESTART_REASON) -> int:
        """At start-up: end every invocation left pending by the previous process as failed. Returns how many."""
        cur = self.db.execute("UPDATE invocations SET status='failed', reason=? WHERE status='pending'", (reason,))
        return cur.rowcount

    def count_invocations(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT COUNT(*) FROM invocations").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM invocations WHERE status=?", (status,)).fetchone()[0])
