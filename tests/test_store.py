"""Config stores against real backends: SQLite files, YAML files and a real etcd server (started here).

The contract tests run against every store that takes writes (SQLite, etcd); the rest exercise what
is particular to each: durability after kill -9 and log trimming (SQLite), read-only and reloads
(YAML), outages, reconnection, compaction and the key layout (etcd)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_server import Etcd, wait_for
from helpers import free_port

from pygateway.store import (
    Change,
    EtcdStore,
    ReadOnlyStore,
    SqliteStore,
    Store,
    StoreError,
    StoreUnavailable,
    YamlStore,
)

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """An OnChange that records calls, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[Change] | None]] = []
        self.lock = threading.Lock()

    def __call__(self, rev: int, changes: list[Change] | None) -> None:
        with self.lock:
            self.calls.append((rev, changes))

    def changes(self) -> list[Change]:
        with self.lock:
            return [c for _, cs in self.calls if cs for c in cs]

    def resyncs(self) -> list[int]:
        with self.lock:
            return [rev for rev, cs in self.calls if cs is None]

    def wait_changes(self, n: int, timeout: float = 5.0) -> list[Change]:
        wait_for(lambda: len(self.changes()) >= n, timeout, f"{n} changes (got {self.changes()})")
        return self.changes()


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# --------------------------------------------------------------------------------------------------
# the contract, for every store that takes writes


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "sub" / "config.db")
    else:
        server = request.getfixturevalue("etcd")
        s = EtcdStore([server.url], prefix=f"/test-{uuid.uuid4().hex[:8]}", timeout=2.0)
    yield s
    s.close()


def test_put_get_list_delete(store: Store) -> None:
    assert store.get("routes/1") is None
    a = store.put("routes/1", {"id": "1", "uri": "/a"})
    assert a.key == "routes/1" and a.value == {"id": "1", "uri": "/a"}
    assert a.created_index == a.modified_index > 0
    assert store.get("routes/1") == a

    b = store.put("routes/1", {"id": "1", "uri": "/b"})
    assert b.created_index == a.created_index, "replacing keeps the creation index"
    assert b.modified_index > a.modified_index
    assert store.get("routes/1") == b

    store.put("routes/10", {"id": "10"})
    store.put("routes/2", {"id": "2"})
    store.put("upstreams/1", {"id": "1", "nodes": {"127.0.0.1:80": 1}})
    store.put("consumers/jack", {"username": "jack"})
    store.put("consumers/jack/credentials/c1", {"id": "c1"})
    assert [i.key for i in store.list("routes/")] == ["routes/1", "routes/10", "routes/2"]
    assert [i.key for i in store.list("upstreams/")] == ["upstreams/1"]
    assert [i.key for i in store.list("consumers/jack/credentials/")] == ["consumers/jack/credentials/c1"]
    assert store.list("ssls/") == []
    assert store.get("routes/1/") is None and store.get("routes") is None

    value = {"nested": {"list": [1, 2.5, None, True], "unicode": "héllo ✓"}}
    assert store.put("plugin_metadata/x", value).value == value
    assert store.get("plugin_metadata/x").value == value  # type: ignore[union-attr]

    rev_before = store.load_all()[0]
    gone = store.delete("routes/1")
    assert gone == b
    assert store.get("routes/1") is None
    assert store.delete("routes/1") is None
    rev_after = store.load_all()[0]
    assert rev_after == rev_before + 1, "a delete bumps the revision once; a no-op delete does not"

    with pytest.raises(StoreError):
        store.put("routes/bad", {"x": object()})


def test_revision_and_load_all(store: Store) -> None:
    rev0, items0 = store.load_all()
    assert items0 == []
    revs = []
    for i in range(5):
        revs.append(store.put(f"services/s{i}", {"id": f"s{i}", "n": i}).modified_index)
    assert revs == sorted(revs) and len(set(revs)) == 5 and revs[0] > rev0
    rev, items = store.load_all()
    assert rev == revs[-1]
    assert [i.key for i in items] == [f"services/s{i}" for i in range(5)]
    assert items == store.list("")
    for it in items:
        assert it == store.get(it.key)
    d = store.delete("services/s0")
    assert d is not None
    rev2, items2 = store.load_all()
    assert rev2 == rev + 1 and len(items2) == 4


def test_watch_delivers_in_order(store: Store) -> None:
    since, _ = store.load_all()
    rec = Recorder()
    store.watch(since, rec)
    t0 = time.monotonic()
    a = store.put("routes/1", {"id": "1", "v": 1})
    b = store.put("routes/2", {"id": "2"})
    c = store.put("routes/1", {"id": "1", "v": 2})
    store.delete("routes/2")
    rev_del = store.load_all()[0]
    got = rec.wait_changes(4, timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert got == [
        Change(a.modified_index, "routes/1", {"id": "1", "v": 1}),
        Change(b.modified_index, "routes/2", {"id": "2"}),
        Change(c.modified_index, "routes/1", {"id": "1", "v": 2}),
        Change(rev_del, "routes/2", None),
    ]
    for rev, changes in rec.calls:
        assert changes and rev == changes[-1].revision
    assert rec.resyncs() == []


def test_watch_replays_from_old_revision(store: Store) -> None:
    start = store.put("routes/0", {"id": "0"}).modified_index
    store.put("routes/1", {"id": "1"})
    store.delete("routes/0")
    store.put("upstreams/u", {"id": "u"})
    rec = Recorder()
    store.watch(start, rec)  # everything after `start`
    got = rec.wait_changes(3)
    assert [(c.key, c.value) for c in got] == [
        ("routes/1", {"id": "1"}),
        ("routes/0", None),
        ("upstreams/u", {"id": "u"}),
    ]
    assert [c.revision for c in got] == [start + 1, start + 2, start + 3]
    store.put("routes/9", {"id": "9"})  # and it goes on live
    assert rec.wait_changes(4)[-1].key == "routes/9"


def test_watch_survives_a_failing_callback_and_stops_on_close(store: Store) -> None:
    seen: list[int] = []

    def cb(rev: int, changes: list[Change] | None) -> None:
        seen.append(rev)
        if len(seen) == 1:
            raise RuntimeError("boom")

    store.watch(store.load_all()[0], cb)
    r1 = store.put("routes/1", {"id": "1"}).modified_index
    wait_for(lambda: r1 in seen, what="first change")
    r2 = store.put("routes/2", {"id": "2"}).modified_index
    wait_for(lambda: r2 in seen, what="change after a failing callback")
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 < 3.0, "close() must stop the watcher promptly"
    n = len(seen)
    time.sleep(0.3)
    assert len(seen) == n


# --------------------------------------------------------------------------------------------------
# SQLite

_CHILD = """
import sys
sys.path.insert(0, {root!r})
from pygateway.store.sqlite import SqliteStore
s = SqliteStore({path!r})
for i in range(100000):
    s.put("routes/%d" % i, {{"id": str(i), "pad": "x" * 200}})
    sys.stdout.write("acked %d\\n" % i)
    sys.stdout.flush()
"""


def test_sqlite_acked_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "config.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: list[int] = []
    try:
        while len(acked) < 40:
            line = proc.stdout.readline()
            assert line, f"child died: {proc.stderr.read().decode() if proc.stderr else ''}"
            acked.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)  # in the middle of writing
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked += [int(line.split()[1]) for line in out.decode().splitlines() if line.startswith("acked ")]
    s = SqliteStore(path)
    try:
        rev, items = s.load_all()
        keys = {i.key for i in items}
        missing = [i for i in acked if f"routes/{i}" not in keys]
        assert not missing, f"acknowledged writes lost: {missing[:10]}"
        assert rev >= len(acked)
        assert s.get(f"routes/{acked[-1]}") is not None
        s.put("routes/after", {"id": "after"})  # the file is usable after the crash
    finally:
        s.close()


def test_sqlite_log_trimming_resyncs(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db", keep_revisions=5)
    try:
        for i in range(20):
            s.put(f"routes/{i}", {"id": str(i)})
        rec = Recorder()
        s.watch(3, rec)  # revision 4 is long gone from the log
        wait_for(lambda: rec.resyncs(), what="resync")
        assert rec.resyncs() == [20] and rec.changes() == []
        s.put("routes/x", {"id": "x"})
        assert rec.wait_changes(1) == [Change(21, "routes/x", {"id": "x"})]

        rec2 = Recorder()
        s.watch(17, rec2)  # still in the log: replayed, no resync
        got = rec2.wait_changes(4)
        assert [c.revision for c in got] == [18, 19, 20, 21] and rec2.resyncs() == []
    finally:
        s.close()


def test_sqlite_in_process_writes_are_delivered_within_ms(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db", poll_interval=1.0)  # so that only the notification can be fast
    try:
        rec = Recorder()
        s.watch(0, rec)
        lat = []
        for i in range(15):
            t0 = time.monotonic()
            s.put(f"routes/{i}", {"id": str(i)})
            rec.wait_changes(i + 1, timeout=5.0)
            lat.append(time.monotonic() - t0)
        lat.sort()
        assert lat[len(lat) // 2] < 0.05, f"median put-to-callback latency {lat[len(lat) // 2]:.3f}s"

        other = SqliteStore(tmp_path / "c.db", poll_interval=1.0)  # a second instance on the same file
        try:
            lat = []
            for i in range(15):
                t0 = time.monotonic()
                other.put(f"upstreams/{i}", {"id": str(i)})
                rec.wait_changes(15 + i + 1, timeout=5.0)
                lat.append(time.monotonic() - t0)
            lat.sort()
            assert lat[len(lat) // 2] < 0.05, f"median latency across instances {lat[len(lat) // 2]:.3f}s"
        finally:
            other.close()
    finally:
        s.close()


def _put_from_another_process(path: Path) -> None:
    """`routes/ext` written into the store file by a separate Python process."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pygateway.store.sqlite import SqliteStore\n"
        f"s = SqliteStore({str(path)!r}); s.put('routes/ext', {{'id': 'ext'}}); s.close()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=10)


@pytest.mark.parametrize("poll_interval", [0.1, 30.0])
def test_sqlite_sees_writes_of_another_process(tmp_path: Path, poll_interval: float) -> None:
    """Another process's write reaches the watchers. With a 30 s poll only inotify on the file's
    directory can make that fast; closing waits for no poll either way."""
    path = tmp_path / "c.db"
    s = SqliteStore(path, poll_interval=poll_interval)
    try:
        rec = Recorder()
        s.watch(0, rec)
        _put_from_another_process(path)
        assert rec.wait_changes(1, timeout=5.0) == [Change(1, "routes/ext", {"id": "ext"})]
        assert s.put("routes/own", {"id": "own"}).modified_index == 2
    finally:
        t0 = time.monotonic()
        s.close()
        assert time.monotonic() - t0 < 1.0, "close() waits for no poll"


def test_sqlite_concurrent_writers(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    try:
        rec = Recorder()
        s.watch(0, rec)
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(25):
                    s.put(f"routes/{n}-{i}", {"id": f"{n}-{i}"})
                    s.list("routes/")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        rev, items = s.load_all()
        assert rev == 100 and len(items) == 100
        got = rec.wait_changes(100)
        assert [c.revision for c in got] == list(range(1, 101))
    finally:
        s.close()


def test_sqlite_reopen_keeps_content_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.db"
    s = SqliteStore(path)
    s.put("routes/1", {"id": "1"})
    s.put("routes/1", {"id": "1", "v": 2})
    s.close()
    with pytest.raises(StoreError):
        s.get("routes/1")
    s2 = SqliteStore(path)
    try:
        assert s2.get("routes/1") == s2.list("routes/")[0]
        it = s2.put("routes/1", {"id": "1", "v": 3})
        assert (it.created_index, it.modified_index) == (1, 3)
    finally:
        s2.close()


# --------------------------------------------------------------------------------------------------
# YAML

YAML_1 = """
routes:
  - id: 1
    uri: /a
    upstream_id: u1
  - uri: /no-id
upstreams:
  - id: u1
    nodes:
      "127.0.0.1:1980": 1
consumers:
  - username: jack
    plugins:
      key-auth: {key: k}
global_rules:
  - id: g1
    plugins: {}
    desc: 2024-01-02
#END
"""


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode: the change is seen whatever the timestamp granularity


def test_yaml_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "apisix.yaml"
    _write(path, YAML_1)
    s = YamlStore(path)
    try:
        assert s.read_only
        rev, items = s.load_all()
        assert rev == 1
        assert [i.key for i in items] == [
            "consumers/jack",
            "global_rules/g1",
            "routes/1",
            "routes/arr_2",
            "upstreams/u1",
        ]
        assert s.get("routes/1").value == {"id": 1, "uri": "/a", "upstream_id": "u1"}  # type: ignore[union-attr]
        assert s.get("consumers/jack").value["plugins"] == {"key-auth": {"key": "k"}}  # type: ignore[union-attr]
        assert [i.key for i in s.list("routes/")] == ["routes/1", "routes/arr_2"]
        assert s.get("global_rules/g1").value["desc"] == "2024-01-02"  # type: ignore[union-attr]
        assert json.dumps(s.load_all()[1][0].value)  # values are plain JSON
        assert s.get("routes/2") is None
        with pytest.raises(ReadOnlyStore, match="standalone YAML mode.*edit the file instead"):
            s.put("routes/3", {"id": "3"})
        with pytest.raises(ReadOnlyStore, match=str(path)):
            s.delete("routes/1")
    finally:
        s.close()


def test_yaml_change_resyncs_and_bad_yaml_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "apisix.yaml"
    _write(path, YAML_1)
    s = YamlStore(path, poll_interval=0.05)
    try:
        rec = Recorder()
        s.watch(1, rec)
        before = s.get("upstreams/u1")
        _write(path, YAML_1.replace("uri: /a", "uri: /changed"))
        wait_for(lambda: rec.resyncs() == [2], what="resync after a file change")
        rev, _ = s.load_all()
        assert rev == 2
        r1 = s.get("routes/1")
        assert r1 is not None and r1.value["uri"] == "/changed"
        assert (r1.created_index, r1.modified_index) == (1, 2)
        assert s.get("upstreams/u1") == before, "an unchanged object keeps its indexes"

        _write(path, "routes: [ {id: 1, uri: /broken\n")  # invalid YAML
        time.sleep(0.3)  # several polls: nothing must happen
        assert rec.resyncs() == [2]
        assert s.load_all()[0] == 2 and s.get("routes/1") == r1

        _write(path, "routes: 5\n")  # valid YAML, invalid config: also kept out
        time.sleep(0.3)
        assert rec.resyncs() == [2] and s.get("routes/1") == r1

        _write(path, "routes:\n  - {id: 7, uri: /seven}\n")
        wait_for(lambda: rec.resyncs() == [2, 3], what="resync after the file was fixed")
        assert [i.key for i in s.load_all()[1]] == ["routes/7"]

        rec_old = Recorder()
        s.watch(1, rec_old)  # a watcher behind the current content resyncs at once
        wait_for(lambda: rec_old.resyncs() == [3], what="resync of a late watcher")
    finally:
        s.close()


def test_yaml_invalid_at_start(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read"):
        YamlStore(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(StoreError, match="invalid YAML"):
        YamlStore(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("routes:\n  - {id: 1}\n  - {id: 1}\n")
    with pytest.raises(StoreError, match="duplicate"):
        YamlStore(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("#END\n")
    s = YamlStore(empty)
    assert s.load_all() == (1, [])
    s.close()


# --------------------------------------------------------------------------------------------------
# etcd


def test_etcd_key_layout_is_apisix(etcd: Etcd) -> None:
    s = EtcdStore([etcd.url])  # prefix /apisix
    rid = f"t{uuid.uuid4().hex[:8]}"
    try:
        it = s.put(f"routes/{rid}", {"id": rid, "uri": "/x"})
        raw = etcd.call("/v3/kv/range", {"key": _b64(f"/apisix/routes/{rid}")})
        kv = raw["kvs"][0]
        assert json.loads(base64.b64decode(kv["value"])) == {"id": rid, "uri": "/x"}
        assert int(kv["create_revision"]) == it.created_index and int(kv["mod_revision"]) == it.modified_index

        # what APISIX itself writes is read back; its non-JSON markers are skipped
        etcd.call("/v3/kv/put", {"key": _b64("/apisix/upstreams"), "value": _b64("init_dir")})
        etcd.call(
            "/v3/kv/put", {"key": _b64(f"/apisix/upstreams/{rid}"), "value": _b64('{"id":"x","nodes":{}}')}
        )
        assert s.get(f"upstreams/{rid}").value == {"id": "x", "nodes": {}}  # type: ignore[union-attr]
        assert s.get("upstreams") is None
        keys = [i.key for i in s.load_all()[1]]
        assert f"routes/{rid}" in keys and f"upstreams/{rid}" in keys and "upstreams" not in keys
    finally:
        s.close()


def test_etcd_unreachable_and_failover(etcd: Etcd) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s = EtcdStore([dead], prefix=f"/t-{uuid.uuid4().hex[:8]}", timeout=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"etcd at .* is unreachable"):
            s.get("routes/1")
        with pytest.raises(StoreUnavailable):
            s.put("routes/1", {"id": "1"})
        assert time.monotonic() - t0 < 3.0
    finally:
        s.close()
    s = EtcdStore([dead, etcd.url], prefix=f"/t-{uuid.uuid4().hex[:8]}", timeout=1.0)
    try:
        assert s.put("routes/1", {"id": "1"}).value == {"id": "1"}
        rec = Recorder()
        s.watch(0, rec)
        s.put("routes/2", {"id": "2"})
        assert [c.key for c in rec.wait_changes(2, timeout=10)] == ["routes/1", "routes/2"]
    finally:
        s.close()


def test_etcd_outage_and_restart(etcd: Etcd) -> None:
    s = EtcdStore([etcd.url], prefix=f"/t-{uuid.uuid4().hex[:8]}", timeout=1.0)
    rec = Recorder()
    try:
        first = s.put("routes/1", {"id": "1"})
        s.watch(first.modified_index, rec)
        s.put("routes/2", {"id": "2"})
        rec.wait_changes(1)

        # frozen: the connection is accepted but nothing answers
        etcd.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                s.get("routes/1")
            with pytest.raises(StoreUnavailable):
                s.load_all()
            assert time.monotonic() - t0 < 2 * 1.0 + 1.5
        finally:
            etcd.signal(signal.SIGCONT)
        wait_for(lambda: _try(lambda: s.get("routes/1")), timeout=5, what="etcd to answer again")
        s.put("routes/3", {"id": "3"})
        rec.wait_changes(2)

        # killed: connections are refused, the watch stream breaks
        etcd.kill()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            s.put("routes/4", {"id": "4"})
        assert time.monotonic() - t0 < 1.5
        time.sleep(0.5)  # let the watcher fail a few reconnections (back-off grows)
        etcd.start()  # same data dir and port
        it = s.put("routes/5", {"id": "5"})
        got = rec.wait_changes(3, timeout=10)
        assert [(c.key, c.revision) for c in got] == [
            ("routes/2", first.modified_index + 1),
            ("routes/3", got[1].revision),
            ("routes/5", it.modified_index),
        ]
        assert rec.resyncs() == []
        assert s.get("routes/1") == first, "the data survived the restart"
    finally:
        if etcd.proc is None or etcd.proc.poll() is not None:
            etcd.start()
        s.close()


def _try(fn: Callable[[], Any]) -> bool:
    try:
        fn()
        return True
    except StoreError:
        return False


def test_etcd_compaction_resyncs(etcd: Etcd) -> None:
    s = EtcdStore([etcd.url], prefix=f"/t-{uuid.uuid4().hex[:8]}", timeout=2.0)
    try:
        first = s.put("routes/1", {"id": "1"}).modified_index
        for i in range(2, 6):
            s.put(f"routes/{i}", {"id": str(i)})
        rev = s.load_all()[0]
        etcd.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        rec = Recorder()
        s.watch(first, rec)  # first+1 is compacted
        wait_for(lambda: rec.resyncs(), what="resync after compaction")
        assert rec.resyncs()[0] >= rev and rec.changes() == []
        new = s.put("routes/9", {"id": "9"})
        got = rec.wait_changes(1)
        assert got[-1] == Change(new.modified_index, "routes/9", {"id": "9"})
        # and load_all still works on a compacted store
        assert len(s.load_all()[1]) == 6
    finally:
        s.close()


def test_etcd_load_all_pages(etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    import pygateway.store.etcd as etcd_mod

    monkeypatch.setattr(etcd_mod, "_PAGE", 3)
    s = EtcdStore([etcd.url], prefix=f"/t-{uuid.uuid4().hex[:8]}")
    try:
        for i in range(10):
            s.put(f"routes/{i:02d}", {"id": i})
        rev, items = s.load_all()
        assert [i.value["id"] for i in items] == list(range(10))
        assert rev == items[-1].modified_index
        assert len(s.list("routes/0")) == 10
    finally:
        s.close()


def test_etcd_idle_watch_reopens_without_loss(etcd: Etcd) -> None:
    s = EtcdStore([etcd.url], prefix=f"/t-{uuid.uuid4().hex[:8]}")
    s.watch_idle_timeout = 0.3  # the stream is re-opened after 0.3 s without a message
    try:
        rec = Recorder()
        s.watch(s.load_all()[0], rec)
        a = s.put("routes/1", {"id": "1"})
        rec.wait_changes(1)
        time.sleep(1.0)  # a few idle re-opens
        b = s.put("routes/2", {"id": "2"})
        got = rec.wait_changes(2)
        time.sleep(0.5)  # more re-opens: nothing is delivered twice
        assert (
            rec.changes()
            == got
            == [
                Change(a.modified_index, "routes/1", {"id": "1"}),
                Change(b.modified_index, "routes/2", {"id": "2"}),
            ]
        )
        assert rec.resyncs() == []
    finally:
        s.close()


def test_page_lists_direct_children_only(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "p.db")
    for i in range(25):
        s.put(f"consumers/u{i:02d}", {"username": f"u{i:02d}"})
    s.put("consumers/u03/credentials/c1", {"plugins": {}})
    s.put("consumersx/z", {"id": "z"})
    items, total = s.page("consumers/", 20, 10)
    assert total == 25
    assert [i.key for i in items] == [f"consumers/u{i:02d}" for i in range(20, 25)]
    # The generic implementation (other stores) agrees with the SQL one.
    generic = Store.page(s, "consumers/", 20, 10)
    assert generic == (items, total)
    s.close()
