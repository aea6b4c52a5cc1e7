"""access.json (users, vhosts, permissions, topic permissions, policies saved at run time)
is written crash-safely and read back strictly: B-DUR-1 (what the management API or `mq ctl`
changed survives a restart, a SIGKILL included) and B-MGMT-1 (those changes are kept).

The save is: write access.json.tmp, fsync it, rename it over access.json, fsync the
directory. A crash at any point leaves the old or the new complete file; a leftover .tmp is
removed at start; a file that cannot be used stops the start with one clear line."""
from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import threading
from typing import Any

import pytest

from ctlutil import amqp, ctl
from mq.broker.broker import Broker
from mq.broker import definitions
from mq.broker.definitions import ACCESS_FILE, load_access, save_access
from mq.ctl import ApiClient, ApiError
from mq.testing import BrokerProcess, run_broker

MGMT_ARGS = ("--management-port", "0")


def _access_path(broker: BrokerProcess) -> str:
    return os.path.join(broker.data_dir, ACCESS_FILE)


def test_changes_through_ctl_and_api_survive_sigkill(uid: str) -> None:
    """B-DUR-1, B-MGMT-1: each change, made through `mq ctl` or the HTTP API, is on disk when
    the command returns: a SIGKILL right after it and a restart keep it (users, vhosts,
    permissions, topic permissions, policies; a deleted guest stays deleted)."""
    vhost, admin, user = f"v-{uid}", f"admin-{uid}", f"app-{uid}"
    with run_broker(args=MGMT_ARGS) as broker:
        ctl(broker, "add-user", admin, "pw", "--tags", "administrator")
        ctl(broker, "add-vhost", vhost)
        ctl(broker, "set-permissions", admin, "--vhost", vhost, "--configure", ".*",
            "--write", ".*", "--read", ".*")
        ctl(broker, "set-topic-permissions", admin, "amq.topic", "--vhost", vhost,
            "--write", "^w", "--read", "^r")
        ctl(broker, "set-policy", "keep", "^keep\\.", '{"max-length": 3}', "--vhost", vhost,
            "--apply-to", "queues")
        broker.restart(kill=True)

        api = ApiClient(broker.management_url, admin, "pw")
        assert api.get("/api/whoami") == {"name": admin, "tags": ["administrator"]}
        assert api.get(f"/api/permissions/{vhost}/{admin}")["read"] == ".*"
        [topic] = api.get(f"/api/topic-permissions/{vhost}/{admin}")
        assert (topic["exchange"], topic["write"], topic["read"]) == ("amq.topic", "^w", "^r")
        policy = api.get(f"/api/policies/{vhost}/keep")
        assert (policy["pattern"], policy["definition"]) == ("^keep\\.", {"max-length": 3})
        amqp(broker, admin, "pw", vhost).close()

        # The HTTP API this time, and a deletion: the last change before the kill counts.
        api.call("PUT", f"/api/users/{user}", {"password": "pw2", "tags": ""})
        api.call("PUT", f"/api/permissions/{vhost}/{user}",
                 {"configure": "", "write": ".*", "read": ".*"})
        assert api.call("DELETE", "/api/users/guest")[0] == 204
        broker.restart(kill=True)

        assert sorted(u["name"] for u in api.get("/api/users")) == sorted([admin, user])
        assert api.get(f"/api/permissions/{vhost}/{user}")["write"] == ".*"
        with pytest.raises(ApiError) as info:
            ApiClient(broker.management_url).get("/api/whoami")  # guest, deleted
        assert info.value.status == 401
        amqp(broker, user, "pw2", vhost).close()
        assert not os.path.exists(_access_path(broker) + ".tmp")
        # It holds password hashes: for the broker's user only.
        assert stat.S_IMODE(os.stat(_access_path(broker)).st_mode) == 0o600


def test_saves_interrupted_by_sigkill_leave_a_complete_file(uid: str) -> None:
    """B-DUR-1: users are added one by one through the API while the broker is killed
    (SIGKILL) at random moments; after each restart the broker starts (access.json is
    complete) and every user whose PUT had returned is there."""
    rng = random.Random()
    with run_broker(args=MGMT_ARGS) as broker:
        done: list[str] = []
        for round_ in range(3):
            stop = threading.Event()

            def add_users() -> None:
                api = ApiClient(broker.management_url, timeout=5)
                n = 0
                while not stop.is_set():
                    name = f"u-{uid}-{round_}-{n}"
                    try:
                        api.call("PUT", f"/api/users/{name}",
                                 {"password": "pw", "tags": "management"})
                    except (ApiError, OSError):
                        return  # the broker is gone: this one may or may not be saved
                    done.append(name)
                    n += 1

            thread = threading.Thread(target=add_users, daemon=True)
            thread.start()
            threading.Event().wait(rng.uniform(0.2, 0.6))
            broker.kill()
            stop.set()
            thread.join(10)
            assert done, "no user was added before the kill"
            broker.start()
            names = {u["name"] for u in ApiClient(broker.management_url).get("/api/users")}
            assert set(done) - names == set(), "a saved user was lost"
            assert not os.path.exists(_access_path(broker) + ".tmp")


def test_stale_tmp_file_is_removed_at_start(uid: str) -> None:
    """B-DUR-1: an access.json.tmp left by a crash before its rename is not the saved
    state: the broker starts from access.json (or from the defaults when there is none)
    and removes the leftover."""
    with run_broker(args=MGMT_ARGS) as broker:
        ctl(broker, "add-user", f"kept-{uid}", "pw", "--tags", "administrator")
        broker.stop()
        with open(_access_path(broker) + ".tmp", "w") as fh:
            fh.write('{"users": [{"name": "half-writ')  # a torn write
        broker.start()
        names = {u["name"] for u in ApiClient(broker.management_url).get("/api/users")}
        assert names == {"guest", f"kept-{uid}"}
        assert not os.path.exists(_access_path(broker) + ".tmp")
        assert "interrupted save" in broker.log()

        # No access.json at all (a crash during the very first save): the defaults.
        broker.stop()
        os.rename(_access_path(broker), _access_path(broker) + ".tmp")
        broker.start()
        names = {u["name"] for u in ApiClient(broker.management_url).get("/api/users")}
        assert names == {"guest"}
        assert not os.path.exists(_access_path(broker) + ".tmp")


@pytest.mark.parametrize("content, reason", [
    ('{"users": [{"name": "alice", "pass', "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[]", "is not a definitions object"),
    ('{"users": "alice"}', "is not a definitions object"),
    ('{"users": [{"password_hash": "x"}]}', "has an entry without 'name'"),
    ('{"permissions": [{"user": "nobody", "vhost": "/"}]}',
     "no user 'nobody' for permissions in the definitions"),
], ids=["torn", "empty", "list", "users-not-a-list", "user-without-name", "unknown-user"])
def test_unusable_access_file_stops_start_with_one_clear_line(tmp_path: Any, content: str,
                                                              reason: str) -> None:
    """B-DUR-1: a damaged access.json is never silently replaced by the defaults (that would
    bring a deleted guest back): the broker refuses to start, with one line naming the file,
    what is wrong and what to do, and no traceback."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / ACCESS_FILE
    path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "mq", "--port", "0", "--management-port=-1",
                             "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"mq: {path} {reason}"), last
    assert last.endswith("repair it, or move it away to start with the default guest user")
    assert "Traceback" not in result.stderr


# ---- the save, step by step ----------------------------------------------------------

class Crash(BaseException):
    """The process died here (nothing after it runs, no cleanup either)."""


class CrashingOs:
    """Stands in for `os` in mq.broker.definitions: records the file-system calls of a save
    and 'crashes' at the n-th one (a write there writes half its bytes first); once crashed,
    every later call crashes too, as nothing runs in a dead process."""

    CALLS = ("open", "write", "fsync", "fdatasync", "close", "replace", "rename", "unlink")

    def __init__(self, crash_at: int = 0) -> None:
        self.crash_at = crash_at
        self.calls: list[str] = []
        self.crashed = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.CALLS:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.crashed:
                raise Crash(name)
            self.calls.append(name if name != "open" else f"open {os.path.basename(args[0])}")
            if len(self.calls) == self.crash_at:
                self.crashed = True
                if name == "write":
                    real(args[0], bytes(args[1])[:len(args[1]) // 2])
                raise Crash(name)
            return real(*args, **kwargs)
        return call


def _broker_with(*users: str) -> Broker:
    broker = Broker()
    for name in users:
        broker.users.add(name, "pw", [])
    return broker


def _loaded_users(data_dir: str) -> set[str]:
    broker = _broker_with()
    load_access(broker, data_dir)
    return set(broker.users.users)


def test_save_is_tmp_fsync_rename_dirsync(tmp_path: Any, monkeypatch: Any) -> None:
    """B-DUR-1: the save writes a temporary file, fsyncs it, renames it over access.json
    and fsyncs the directory, in that order (so that after a power loss the rename never
    points at unwritten data and is itself durable)."""
    recorder = CrashingOs()
    monkeypatch.setattr(definitions, "os", recorder)
    save_access(_broker_with("alice"), str(tmp_path))
    assert recorder.calls == [f"open {ACCESS_FILE}.tmp", "write", "fsync", "close", "replace",
                              f"open {tmp_path.name}", "fsync", "close"]


def test_crash_at_any_step_of_a_save_leaves_old_or_new(tmp_path: Any,
                                                       monkeypatch: Any) -> None:
    """B-DUR-1: a crash at each step of a save (the write torn halfway included) leaves a
    data dir that loads as the old state before the rename and the new one from it on."""
    data_dir = str(tmp_path)
    old, new = {"guest", "old"}, {"guest", "old", "new"}
    steps = 8  # as in test_save_is_tmp_fsync_rename_dirsync
    for crash_at in range(1, steps + 2):
        save_access(_broker_with("old"), data_dir)
        crashing = CrashingOs(crash_at)
        monkeypatch.setattr(definitions, "os", crashing)
        try:
            save_access(_broker_with("old", "new"), data_dir)
        except Crash:
            pass
        monkeypatch.setattr(definitions, "os", os)
        renamed = "replace" in crashing.calls[:crash_at - 1] or crash_at > steps
        assert _loaded_users(data_dir) == (new if renamed else old), \
            f"crash at step {crash_at} ({crashing.calls[-1]})"
        assert not os.path.exists(os.path.join(data_dir, ACCESS_FILE + ".tmp"))
        with open(os.path.join(data_dir, ACCESS_FILE)) as fh:
            json.load(fh)  # complete


def test_failed_save_keeps_the_old_file(tmp_path: Any, monkeypatch: Any) -> None:
    """B-DUR-1: a save that fails (disk full: the write raises) leaves access.json as it
    was and no temporary file behind, and the error reaches the caller."""
    data_dir = str(tmp_path)
    save_access(_broker_with("old"), data_dir)

    class FullDisk(CrashingOs):
        def __getattr__(self, name: str) -> Any:
            if name == "write":
                def write(fd: int, data: Any) -> int:
                    raise OSError(28, "No space left on device")
                return write
            return getattr(os, name)

    monkeypatch.setattr(definitions, "os", FullDisk())
    with pytest.raises(OSError):
        save_access(_broker_with("old", "new"), data_dir)
    monkeypatch.setattr(definitions, "os", os)
    assert not os.path.exists(os.path.join(data_dir, ACCESS_FILE + ".tmp"))
    assert _loaded_users(data_dir) == {"guest", "old"}
