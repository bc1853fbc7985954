"""The daemon's lifecycle: persistence across restarts, the embedded redis-server stopped
with sdcd (even when sdcd is killed), an external Redis by URL, JSON log lines."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.clients import make_cert, make_key, openssh_line, request, write_identity
from tests.conftest import Daemon, wait_for

# twistd re-raises the signal that stopped it once shutdown is complete.
CLEAN_EXIT = (0, -signal.SIGTERM)


def redis_pids(d: Daemon) -> list[int]:
    """redis-server processes serving this daemon's data directory."""
    found = subprocess.run(
        ["pgrep", "-f", f"redis-server.*{d.data_dir}"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def with_account(d: Daemon, tmp_path, login: str = "keeper"):
    key = make_key("ed25519")
    d.admin("account", "create", login)
    d.admin("key", "add", login, openssh_line(key))
    return write_identity(tmp_path / login, key, make_cert(key, login))


def info(d: Daemon, identity):
    return request(d.docker_port, "GET", "/info", ca=d.ca_path, identity=identity)


def test_restart_keeps_accounts_keys_and_ca(tmp_path):
    d = Daemon(tmp_path / "sdcd")
    d.start()
    try:
        identity = with_account(d, tmp_path)
        assert info(d, identity).status == 200
        ca = d.ca_path.read_bytes()
    finally:
        assert d.stop() in CLEAN_EXIT
    assert redis_pids(d) == [], "the embedded redis-server outlived sdcd"
    d.start()
    try:
        assert d.ca_path.read_bytes() == ca
        assert info(d, identity).status == 200
    finally:
        d.stop()


def test_killed_sdcd_takes_its_redis_along(tmp_path):
    d = Daemon(tmp_path / "sdcd")
    d.start()
    identity = with_account(d, tmp_path)
    assert redis_pids(d)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: not redis_pids(d), 10)
    d.start()
    try:
        assert info(d, identity).status == 200
    finally:
        d.stop()


def test_external_redis_by_url(tmp_path, redis_url, key_prefix):
    d = Daemon(tmp_path / "sdcd", extra=f'[redis]\nurl = "{redis_url}"\nprefix = "{key_prefix}"\n')
    d.start()
    try:
        identity = with_account(d, tmp_path)
        assert info(d, identity).status == 200
        assert redis_pids(d) == [], "an embedded redis-server was started anyway"
    finally:
        d.stop()


def test_json_log_lines(tmp_path):
    log_file = tmp_path / "sdcd.jsonl"
    d = Daemon(tmp_path / "sdcd", extra=f'[log]\nformat = "json"\nfile = "{log_file}"\n')
    d.start()
    try:
        identity = with_account(d, tmp_path, "jsonlog")
        assert info(d, identity).status == 200
        assert request(d.docker_port, "GET", "/info", ca=d.ca_path).status == 401

        def access_events():
            lines = log_file.read_text().splitlines() if log_file.exists() else []
            events = [json.loads(line) for line in lines]
            return [e for e in events if e.get("log_namespace") == "sdcd.access"]

        events = wait_for(lambda: len(access_events()) >= 2 and access_events(), 5)
        ok = next(e for e in events if e["account"] == "jsonlog")
        assert (ok["method"], ok["path"], ok["status"]) == ("GET", "/info", 200)
        assert ok["duration_ms"] >= 0
        refused = next(e for e in events if e["status"] == 401)
        assert refused["account"] == "-"
    finally:
        d.stop()


def test_sigterm_is_a_clean_exit(tmp_path):
    d = Daemon(tmp_path / "sdcd")
    d.start()
    started = time.monotonic()
    assert d.stop() in CLEAN_EXIT
    assert time.monotonic() - started < 10
    assert "Server Shut Down." in d.log()
    assert "embedded redis-server stopped" in d.log()
    assert "Traceback" not in d.log()


def test_crashed_redis_is_restarted(tmp_path):
    """The embedded redis-server is supervised: killed, it comes back, and requests are
    served again with nothing lost (AOF)."""
    d = Daemon(tmp_path / "sdcd")
    d.start()
    try:
        identity = with_account(d, tmp_path)
        (old,) = redis_pids(d)
        subprocess.run(["kill", "-KILL", str(old)], check=True)
        wait_for(lambda: redis_pids(d) and redis_pids(d) != [old], 20)
        assert wait_for(lambda: info(d, identity).status == 200, 20)
        assert "redis-server exited unexpectedly" in d.log()
    finally:
        d.stop()


def test_twistd_help_lists_options():
    from tests.conftest import BIN, env_for_tools

    result = subprocess.run(
        [str(BIN / "twistd"), "sdcd", "--help"], capture_output=True, text=True, env=env_for_tools()
    )
    assert result.returncode == 0
    assert "--config=" in result.stdout and "TOML" in result.stdout
