"""The embedded default store: one SQLite file in WAL mode.

Tables: `kv` (key, value JSON, create_rev, mod_rev) holds the content; `log` (rev, key, value JSON or
NULL for a delete) holds one row per write and feeds watch(). The store's revision is the highest
rev in the log; the log is trimmed to the last `keep_revisions` writes, and a watcher whose `since`
fell off it is told to resync with `on_change(rev, None)`.

Writes commit with `synchronous=FULL`: once put()/delete() has returned, the write survives a
`kill -9` of the process (and, for the WAL's fsync, a power loss). In-process writes wake the
watchers at once through a Condition; writes by other processes sharing the file wake them through
inotify on the file's directory (a safety poll every `max(poll_interval, SAFETY_POLL)` seconds), or,
where inotify is missing, by polling the log every `poll_interval` seconds.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import select
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from pygateway.fswatch import DirWatch

from .base import Change, Item, OnChange, Store, StoreError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    value TEXT
);
"""

_BATCH = 1000  # log rows read per watcher wake-up
SAFETY_POLL = 5.0  # seconds between log reads of an idle watcher when inotify reports writes

# One Condition per database file, shared by every SqliteStore of this process on that file, so a
# write through one instance wakes the watchers of the others at once too.
_CONDS: dict[str, threading.Condition] = {}
_CONDS_LOCK = threading.Lock()


def _shared_condition(path: Path) -> threading.Condition:
    key = os.path.realpath(path)
    with _CONDS_LOCK:
        cond = _CONDS.get(key)
        if cond is None:
            cond = _CONDS[key] = threading.Condition()
        return cond


def _dumps(value: dict[str, Any]) -> str:
    if not isinstance(value, dict):
        raise StoreError(f"a stored value must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"value is not JSON-serialisable: {e}") from e


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    p = prefix
    while p:
        last = p[-1]
        if ord(last) < 0x10FFFF:
            return p[:-1] + chr(ord(last) + 1)
        p = p[:-1]
    return None


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: str | Path, *, keep_revisions: int = 10_000, poll_interval: float = 0.2) -> None:
        if keep_revisions < 1:
            raise ValueError("keep_revisions must be >= 1")
        self.path = Path(path)
        self.keep_revisions = keep_revisions
        self.poll_interval = poll_interval
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout=10000")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch SQLite to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the SQLite store {self.path}: {e}") from e
        self._lock = threading.RLock()  # serialises use of the one connection
        self._cond = _shared_condition(self.path)  # wakes watchers after in-process writes
        self._closed = False
        self._threads: builtins.list[threading.Thread] = []
        # Set by the first watch(): inotify on the file's directory, and the pipe that stops its thread.
        self._files: tuple[DirWatch, int, int] | None = None

    # -- helpers -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the SQLite store {self.path} is closed")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            self._check_open()
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self.path}: {e}") from e

    @staticmethod
    def _item(row: tuple[Any, ...]) -> Item:
        key, value, create_rev, mod_rev = row
        return Item(key, orjson.loads(value), int(create_rev), int(mod_rev))

    def _revision_locked(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(rev), 0) FROM log").fetchone()[0])

    def _write(self, key: str, text: str | None) -> tuple[Item | None, Item | None]:
        """Apply one write in a transaction; returns (previous item, new item). A delete of a missing
        key writes nothing."""
        with self._lock:
            self._check_open()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?", (key,)
                    ).fetchone()
                    prev = self._item(row) if row else None
                    if text is None and prev is None:
                        db.execute("ROLLBACK")
                        return None, None
                    rev = self._revision_locked() + 1
                    new: Item | None = None
                    if text is None:
                        db.execute("DELETE FROM kv WHERE key = ?", (key,))
                    else:
                        created = prev.created_index if prev else rev
                        db.execute(
                            "INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?)",
                            (key, text, created, rev),
                        )
                        new = Item(key, orjson.loads(text), created, rev)
                    db.execute("INSERT INTO log (rev, key, value) VALUES (?, ?, ?)", (rev, key, text))
                    db.execute("DELETE FROM log WHERE rev <= ?", (rev - self.keep_revisions,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self.path}: write of {key!r} failed: {e}") from e
        with self._cond:
            self._cond.notify_all()
        return prev, new

    # -- Store API ---------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        with self._lock:
            self._check_open()
            return self._revision_locked()

    def get(self, key: str) -> Item | None:
        rows = self._query("SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?", (key,))
        return self._item(rows[0]) if rows else None

    def list(self, prefix: str) -> builtins.list[Item]:
        end = _prefix_end(prefix)
        if end is None:
            rows = self._query(
                "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? ORDER BY key", (prefix,)
            )
        else:
            rows = self._query(
                "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, end),
            )
        return [self._item(r) for r in rows if r[0].startswith(prefix)]

    def page(self, prefix: str, offset: int, limit: int) -> tuple[builtins.list[Item], int]:
        """Direct children of `prefix` (not deeper keys), one page of them, and how many there are:
        done in SQL so a page of a 10 000-object collection doesn't decode all of them."""
        end = _prefix_end(prefix)
        where = "key >= ? AND instr(substr(key, ?), '/') = 0" + (" AND key < ?" if end is not None else "")
        args: tuple[Any, ...] = (prefix, len(prefix) + 1) + ((end,) if end is not None else ())
        total = self._query(f"SELECT COUNT(*) FROM kv WHERE {where}", args)[0][0]
        rows = self._query(
            f"SELECT key, value, create_rev, mod_rev FROM kv WHERE {where} ORDER BY key LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._item(r) for r in rows], int(total)

    def put(self, key: str, value: dict[str, Any]) -> Item:
        _, new = self._write(key, _dumps(value))
        assert new is not None
        return new

    def delete(self, key: str) -> Item | None:
        prev, _ = self._write(key, None)
        return prev

    def load_all(self) -> tuple[int, builtins.list[Item]]:
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN")  # one read snapshot for both queries
                try:
                    rev = self._revision_locked()
                    rows = self._db.execute(
                        "SELECT key, value, create_rev, mod_rev FROM kv ORDER BY key"
                    ).fetchall()
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self.path}: {e}") from e
        return rev, [self._item(r) for r in rows]

    def watch(self, since: int, on_change: OnChange) -> None:
        self._check_open()
        if self._files is None and (files := DirWatch.open(str(self.path), modify=True)) is not None:
            self._files = (files, *os.pipe())
            events = threading.Thread(target=self._file_events, name=f"sqlite-inotify:{self.path.name}", daemon=True)
            self._threads.append(events)
            events.start()
        t = threading.Thread(
            target=self._watch_loop,
            args=(since, on_change),
            name=f"sqlite-watch:{self.path.name}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()

    def _read_log(self, after: int) -> tuple[bool, int, builtins.list[Change]]:
        """(resync needed, current revision, changes after `after`)."""
        with self._lock:
            if self._closed:
                return False, after, []
            self._db.execute("BEGIN")
            try:
                lo, hi = self._db.execute("SELECT MIN(rev), MAX(rev) FROM log").fetchone()
                hi = int(hi or 0)
                if hi <= after:
                    return False, hi, []
                if lo is not None and int(lo) > after + 1:
                    return True, hi, []
                rows = self._db.execute(
                    "SELECT rev, key, value FROM log WHERE rev > ? ORDER BY rev LIMIT ?", (after, _BATCH)
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        changes = [Change(int(r), k, orjson.loads(v) if v is not None else None) for r, k, v in rows]
        return False, hi, changes

    def _watch_loop(self, since: int, on_change: OnChange) -> None:
        last = since
        while not self._closed:
            try:
                resync, current, changes = self._read_log(last)
            except (sqlite3.Error, StoreError) as e:
                log.warning("SQLite store %s: watcher cannot read the log: %s", self.path, e)
                resync, current, changes = False, last, []
            if self._closed:
                return
            try:
                if resync:
                    last = current
                    on_change(current, None)
                elif changes:
                    last = changes[-1].revision
                    on_change(last, changes)
                    continue  # there may be more in the log: read again before sleeping
            except Exception:
                log.exception("SQLite store %s: watch callback failed", self.path)
            with self._cond:
                if self._closed:
                    return
                # A write between _read_log and here has already notified: the check below stays
                # cheap (one MAX(rev) read) and the condition wait covers the common case.
                if self._peek_revision() > last:
                    continue
                self._cond.wait(self.poll_interval if self._files is None else max(self.poll_interval, SAFETY_POLL))

    def _file_events(self) -> None:
        """Another process wrote the file: wake the watchers (they read the log and see)."""
        assert self._files is not None
        files, stop, _ = self._files
        while True:
            ready, _, _ = select.select([files.fd, stop], [], [])
            if stop in ready:
                return
            files.drain()
            with self._cond:
                self._cond.notify_all()

    def _peek_revision(self) -> int:
        with self._lock:
            if self._closed:
                return -1
            try:
                return self._revision_locked()
            except sqlite3.Error:
                return -1

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._files is not None:
            os.write(self._files[2], b"x")
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout=2.0)
        if self._files is not None:
            files, stop_r, stop_w = self._files
            files.close()
            os.close(stop_r)
            os.close(stop_w)
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
