"""`./run` (the README's first command), `make run` and their launcher, `manage.py serve`, stop
cleanly on SIGINT and SIGTERM.

Each case starts the real thing in a session of its own on a free port, against a temporary
SQLite database that already holds a store (so `demo_setup` keeps it instead of seeding the
demo), waits until the web server answers HTTP and the django-q2 cluster is running, sends the
signal to the whole process group (as a terminal's Ctrl-C or `kill -- -PGID` does), and checks
that everything it started is gone and nothing crashed or printed a traceback (issue 18).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
MARKER = "RECOUP_MAKE_RUN_TEST"
START_TIMEOUT = 240  # seconds: migrate and startup on a loaded 2-core machine
STOP_TIMEOUT = 90
BAD_OUTPUT = ("Traceback", "Segmentation fault", "RecursionError", "***")

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc)"),
    pytest.mark.skipif(
        not PYTHON.exists(), reason=f"needs the project's venv ({PYTHON}); run `make install`"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_env(db_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # pytest-django's settings module, an outer make's flags and CI's PostgreSQL/Redis stay out:
    # this test runs `make run`'s embedded defaults on its own SQLite file.
    for name in ("DJANGO_SETTINGS_MODULE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REDIS_URL"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=f"sqlite:///{db_path}",
        DEBUG="1",
        LOG_LEVEL="INFO",
        Q_SYNC="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def db_env(tmp_path_factory):
    """A migrated temporary SQLite database with one store (no demo seed): its environment."""
    db_path = tmp_path_factory.mktemp("make_run") / "db.sqlite3"
    env = _base_env(db_path)
    for args in (
        ["migrate", "--noinput", "-v0"],
        ["create_store", "--name", "Make Run Test", "--json"],
    ):
        done = subprocess.run(
            [str(PYTHON), "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return env


def _marked_pids(tag: str) -> list[int]:
    """Live processes whose environment carries this run's marker (every descendant does)."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def _cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return lines


def _answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _run_and_stop(argv: list[str], env: dict[str, str], sig: int, tmp_path: Path):
    """Start argv in a new session, wait until web and worker are up, signal the group.

    Returns (exit status, combined output, commands still alive afterwards)."""
    tag = uuid.uuid4().hex
    env = dict(env, **{MARKER: tag})
    port = int(env["PORT"])
    log_path = tmp_path / f"output-{signal.Signals(sig).name}.txt"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            output = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"exited with {proc.returncode} before it was up:\n{output}")
            if "] running." in output and _answers_http(port):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not up after {START_TIMEOUT} s:\n{output}")
            time.sleep(0.5)
        started = " | ".join(_cmdlines(_marked_pids(tag)))
        assert "runserver" in started and "qcluster" in started, started

        os.killpg(proc.pid, sig)
        status = proc.wait(timeout=STOP_TIMEOUT)
        # After SIGTERM make does not wait for its recipe; give the children time to finish.
        deadline = time.monotonic() + STOP_TIMEOUT
        while _marked_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _cmdlines(_marked_pids(tag))
        return status, log_path.read_text(errors="replace"), left
    finally:
        for pid in _marked_pids(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_clean(output: str, left: list[str]):
    assert not left, f"still running after the stop: {left}\n{output}"
    for bad in BAD_OUTPUT:
        assert bad not in output, f"{bad!r} in the output:\n{output}"
    assert "Stopped." in output, output
    assert "has stopped." in output, output  # the worker's own orderly stop


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make on the PATH")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_make_run_stops_cleanly_on_a_signal_to_its_process_group(db_env, sig, tmp_path):
    port = str(_free_port())
    env = dict(db_env, PORT=port)
    # -o: never reinstall into the venv here, even if pyproject.toml is newer than the stamp.
    argv = ["make", "--no-print-directory", "-o", ".venv/.installed-run", "run", f"PORT={port}"]
    status, output, left = _run_and_stop(argv, env, sig, tmp_path)
    _assert_clean(output, left)
    # The recipe (the launcher) exited 0, or make would have printed "*** ... Error N"; make
    # itself then dies by the signal it got, as GNU make always does (a shell shows 130 for
    # SIGINT, 143 for SIGTERM).
    assert status in (0, 130, -sig), (status, output)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make on the PATH")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_cleanly_and_exits_0_on_a_signal_to_its_process_group(db_env, sig, tmp_path):
    port = str(_free_port())
    env = dict(db_env, PORT=port)
    # ./run sets up through make, then execs the launcher: the status is the launcher's own.
    status, output, left = _run_and_stop([str(ROOT / "run")], env, sig, tmp_path)
    _assert_clean(output, left)
    assert status == 0, (status, output)
    assert f"http://127.0.0.1:{port}/" in output, output  # demo_setup's banner: setup ran first


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_both_children_and_exits_0(db_env, sig, tmp_path):
    port = str(_free_port())
    env = dict(db_env, PORT=port)
    argv = [str(PYTHON), "manage.py", "serve", "--skip-checks", "--port", port]
    status, output, left = _run_and_stop(argv, env, sig, tmp_path)
    _assert_clean(output, left)
    assert status == 0, (status, output)
