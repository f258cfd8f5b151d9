"""The store never throws data away: a full disk mid-session, a database locked by another
process, one written by a newer release, a read-only mount, a missing permission — each is
met by waiting or by one clear line and exit code 78, never by moving a healthy file aside,
and a session's true end reaches the CSMS once space returns, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dialects import DIALECTS, Dialect
from harness import ROOT, acpagent, cpagent, write_config

from cpagent import store as store_module
from cpagent.cli import EX_CONFIG
from cpagent.cli import main as cli_main
from cpagent.clock import parse_time
from cpagent.devcsms import DevCsms
from cpagent.store import SCHEMA_VERSION, Store

CLI = "CLI-CP"
IS_ROOT = os.geteuid() == 0


def one_clear_line(result: subprocess.CompletedProcess | tuple[int, str]) -> str:
    code, err = (result.returncode, result.stderr) if isinstance(
        result, subprocess.CompletedProcess) else result
    assert code == EX_CONFIG, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def moved_aside(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".damaged-" in p.name]


def make_database(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(folder / "cpagent.db")
    store.put_state("boot_reason", "PowerUp")
    store.close()
    return folder / "cpagent.db"


def set_schema_version(db: Path, version: int) -> None:
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {version}")
    raw.commit()
    raw.close()  # the last connection checkpoints the WAL into the file


# ---- start-up: one line, exit 78 -------------------------------------------------------------


def test_a_database_of_a_newer_release_is_refused_and_left_untouched(tmp_path):
    db = make_database(tmp_path)
    set_schema_version(db, SCHEMA_VERSION + 1)
    before = digest(db)
    line = one_clear_line(cpagent("run", "--config",
                                  str(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))))
    assert "newer" in line and str(SCHEMA_VERSION + 1) in line
    assert digest(db) == before
    assert not moved_aside(tmp_path)


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    text = config.read_text().replace(f'data_dir = "{tmp_path}"',
                                      f'data_dir = "{tmp_path / "plain-file"}"')
    (tmp_path / "plain-file").write_text("not a directory")
    config.write_text(text)
    line = one_clear_line(cpagent("run", "--config", str(config)))
    assert "plain-file" in line and "not a directory" in line
    checked = cpagent("config", "check", str(config))
    assert checked.returncode == 1 and "not a directory" in checked.stdout


def test_a_config_nested_5000_deep_is_a_config_error(tmp_path):
    config = tmp_path / "deep.toml"
    config.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    line = one_clear_line(cpagent("run", "--config", str(config)))
    assert "deep.toml" in line
    checked = cpagent("config", "check", str(config))
    assert checked.returncode == 1 and "Traceback" not in checked.stdout + checked.stderr


def test_a_bad_log_level_is_named(tmp_path):
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    line = one_clear_line(cpagent("run", "--config", str(config), "--log-level", "LOUD"))
    assert "LOUD" in line and "WARNING" in line


def test_a_database_the_service_user_may_not_read_is_not_moved_aside(tmp_path):
    db = make_database(tmp_path)
    before = digest(db)
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    command = [sys.executable, "-m", "cpagent", "run", "--config", str(config)]
    if IS_ROOT:  # root reads anything: give up the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv(1) is needed to drop root's file access override")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    os.chmod(db, 0)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        os.chmod(db, 0o600)
    line = one_clear_line(result)
    assert "not readable" in line or "permission" in line, line
    assert not moved_aside(tmp_path)
    assert digest(db) == before


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)),
                    "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a read-only file system needs root")
def test_a_read_only_mount_is_named_and_the_database_kept(tmp_path):
    with tmpfs(tmp_path / "ro", "16m") as mount:
        db = make_database(mount)
        (mount / "cpagent.db.reserve").unlink(missing_ok=True)
        before = digest(db)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
        config.write_text(config.read_text().replace(f'data_dir = "{tmp_path}"',
                                                     f'data_dir = "{mount}"'))
        line = one_clear_line(cpagent("run", "--config", str(config)))
        assert "read-only" in line or "not writable" in line, line
        assert digest(db) == before
        assert not moved_aside(mount)


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "db.execute(\"INSERT OR REPLACE INTO state VALUES ('held', '1')\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('COMMIT')\n"), str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_database_locked_at_start_is_waited_for(tmp_path):
    db = make_database(tmp_path)
    holder = _hold_lock(db, 1.5)
    began = time.monotonic()
    store = Store(db)  # waits for the other process, then opens the same data
    waited = time.monotonic() - began
    holder.wait()
    try:
        assert waited >= 1.0
        assert store.state("boot_reason") == "PowerUp"
    finally:
        store.close()


def test_a_database_locked_for_good_ends_in_one_line_and_78(tmp_path, monkeypatch, capsys):
    db = make_database(tmp_path)
    before = os.stat(db).st_ino
    monkeypatch.setattr(store_module, "LOCK_WAIT", 1.0)
    holder = _hold_lock(db, 30)
    try:
        code = cli_main(["run", "--config",
                         str(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    line = one_clear_line((code, err))
    assert "locked by another process" in line and "second cpagent" in line
    assert os.stat(db).st_ino == before  # the same file, not a fresh one


# ---- a full disk in the middle of a session ---------------------------------------------------


class SmallDisk:
    """A small file system for the agent's data: tmpfs, mounted directly as root, or in a
    private mount namespace (`unshare -rm`) that the test reaches through /proc/PID/root."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size
        self.process: asyncio.subprocess.Process | None = None
        self._ballast: list[Path] = []

    @staticmethod
    def possible() -> str | None:
        if IS_ROOT:
            return None
        if shutil.which("unshare") is None:
            return "neither root nor unshare(1)"
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
        return None if probe.returncode == 0 else "user namespaces are not allowed here"

    def __enter__(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                            str(self.path)], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if IS_ROOT:
            subprocess.run(["umount", "-l", str(self.path)], check=False)

    async def run_agent(self, config: Path) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "cpagent", "run", "--config", str(config)]
        if not IS_ROOT:
            command = ["unshare", "-rm", "sh", "-c",
                       f'mount -t tmpfs -o size={self.size} tmpfs "$0" && exec "$@"',
                       str(self.path), *command]
        self.process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        return self.process

    @property
    def seen(self) -> Path:
        """The agent's data directory as the agent sees it."""
        if IS_ROOT:
            return self.path
        assert self.process is not None
        return Path(f"/proc/{self.process.pid}/root") / self.path.relative_to("/")

    def fill(self) -> int:
        """Write until the file system is full; returns the bytes written."""
        ballast = self.seen / f"ballast-{len(self._ballast)}"
        self._ballast.append(ballast)
        written = 0
        chunk = b"\0" * 65536
        with open(ballast, "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        return written

    def free(self) -> None:
        for ballast in self._ballast:
            ballast.unlink(missing_ok=True)
        self._ballast.clear()


async def status_of(config: Path) -> dict:
    code, out, err = await acpagent("status", "--json", "--config", str(config))
    assert code == 0, err
    return json.loads(out)


async def until(check, timeout: float = 20.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(every)


@pytest.mark.timeout(120)
async def test_a_disk_that_fills_mid_session_loses_no_stop_and_tells_everyone(peer, tmp_path):
    unavailable = SmallDisk.possible()
    if unavailable:
        pytest.skip(f"no small file system to fill: {unavailable}")
    say: Dialect = DIALECTS[peer.version](peer, identity=CLI)
    with SmallDisk(tmp_path / "disk", "12m") as disk:
        config = write_config(tmp_path, peer.url, ocpp_version=peer.version)
        config.write_text(config.read_text().replace(f'data_dir = "{tmp_path}"',
                                                     f'data_dir = "{disk.path}"'))
        agent = await disk.run_agent(config)
        via = ("--config", str(config))
        try:
            await say.wait_status("Available", 2, timeout=20)
            await say.sample_every_second()
            mark = peer.mark()
            assert (await acpagent("sim", "plug", *via))[0] == 0
            assert (await acpagent("sim", "swipe", "04A2B3C4", *via))[0] == 0
            start = await say.wait_start(after=mark)
            await say.wait_charging(after=mark)
            await say.wait_meter_values(after=mark)

            # The disk fills: the reserve beside the database is given up for the sessions
            # running now, and the operator, the installer and the CSMS are told.
            disk.fill()
            full = await until(lambda: _disk_full(config))
            assert "disk full" in full["storage"]["problem"]
            assert full["storage"]["reserve_held"] is False
            event = await peer.wait_for_call("SecurityEventNotification", after=mark,
                                             timeout=10)
            assert event.payload["type"] == "MemoryExhaustion"
            out = (await acpagent("status", *via))[1]
            assert "disk   FULL" in out

            # Even the reserve fills up; the driver ends the session now.
            disk.fill()
            await asyncio.sleep(2.5)  # a sample or two fail to be written meanwhile
            mark = peer.mark()
            stopped_at = time.time()
            assert (await acpagent("sim", "swipe", "04A2B3C4", *via))[0] == 0
            await asyncio.sleep(3)
            status = await status_of(config)
            assert status["storage"]["disk_full"] is True
            # Nobody is told of an end that is not on record yet ...
            assert [r for r in peer.calls() if peer.records.index(r) >= mark
                    and r.action in ("StopTransaction", "TransactionEvent")
                    and (r.action == "StopTransaction" or r.payload["eventType"] == "Ended")
                    ] == []
            # ... no new session starts while the disk is full ...
            assert (await acpagent("sim", "plug", "--connector", "2", *via))[0] == 0
            assert (await acpagent("sim", "swipe", "0BADF00D", "--connector", "2", *via))[0] \
                == 0
            await asyncio.sleep(1.5)
            assert status["connectors"][1]["transaction"] is None
            assert (await status_of(config))["connectors"][1]["contactor_closed"] is False

            # ... and once space returns, the true end goes out, without a restart.
            freed = peer.mark()
            disk.free()
            end = await say.wait_end(after=mark, timeout=30)
            assert peer.records.index(end) >= freed  # told once it was on record
            assert agent.returncode is None
            assert say.transaction_of(end) == (say.transaction_id(start))
            assert say.end_reason(end) == "Local"
            assert stopped_at - 1 <= parse_time(end.payload["timestamp"]) <= stopped_at + 2
            assert say.meter_stop(end) >= say.meter_start(start)
            recovered = await until(lambda: _disk_ok(config))
            assert recovered["storage"]["reserve_held"] is True
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(agent.wait(), 15)
                except TimeoutError:
                    agent.kill()
                    await agent.wait()


async def _disk_full(config: Path) -> dict | None:
    status = await status_of(config)
    return status if status["storage"]["disk_full"] else None


async def _disk_ok(config: Path) -> dict | None:
    status = await status_of(config)
    return status if not status["storage"]["disk_full"] else None


# ---- a really damaged file: moved aside, told, and what it held carried over --------------------


def _damage_one_table(db: Path) -> None:
    """Break the pages of a table no session lives in, as a failing SD card might."""
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE scratch (payload BLOB)")
    raw.executemany("INSERT INTO scratch VALUES (?)", [(os.urandom(3000),) for _ in range(40)])
    raw.commit()
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'scratch'").fetchone()[0]
    raw.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad" * (page_size // 2))


async def test_a_damaged_database_is_moved_aside_told_and_its_sessions_kept(tmp_path):
    from harness import RunningAgent, booted, make_config

    from cpagent.clock import Clock

    async with DevCsms() as csms:
        config = make_config(tmp_path / "agent", csms.url)
        cp = RunningAgent(config, Clock("system"))
        await cp.start()
        await booted(csms)
        cp.mock.plug(1)
        cp.mock.swipe("04A2B3C4")
        first = await csms.wait_for_call("StartTransaction")
        await csms.wait_for_call("StatusNotification", predicate=lambda p:
                                 p["status"] == "Charging")
        await cp.settle()
        await asyncio.sleep(0.2)
        await cp.stop()  # and the power goes mid-session
        db = tmp_path / "agent" / "cpagent.db"
        _damage_one_table(db)
        with pytest.raises(sqlite3.DatabaseError):  # really damaged, as SQLite sees it
            check = sqlite3.connect(db).execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)

        mark = csms.mark()
        await cp.start()
        try:
            status = cp.agent.snapshot()
            assert "damaged" in status["storage"]["problem"]
            assert "carried over 1 transaction(s)" in status["storage"]["problem"]
            assert moved_aside(tmp_path / "agent")
            # The session the old file held is not forgotten: it is ended by the power loss,
            # under the transactionId the CSMS gave it.
            stop = await csms.wait_for_call("StopTransaction", after=mark, timeout=10)
            assert stop.payload["reason"] == "PowerLoss"
            assert stop.payload["transactionId"] == csms.transaction_ids[first.unique_id]
            assert csms.calls("StartTransaction") == [first]  # not started a second time
            event = await csms.wait_for_call(
                "SecurityEventNotification", after=mark, timeout=10,
                predicate=lambda p: p["type"] == "StorageDamaged")
            assert "damaged" in event.payload["techInfo"]
        finally:
            await cp.stop()


def test_the_database_that_holds_secrets_is_readable_by_its_owner_only(tmp_path):
    db = make_database(tmp_path)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()
            if p.name.startswith("cpagent.db") and not p.name.endswith(".reserve")} == {
        "cpagent.db": 0o600} | {n: 0o600 for n in ("cpagent.db-wal", "cpagent.db-shm")
                                if (tmp_path / n).exists()}
    os.chmod(db, 0o644)  # an older release, or a copy made by hand
    Store(db).close()
    assert db.stat().st_mode & 0o777 == 0o600
