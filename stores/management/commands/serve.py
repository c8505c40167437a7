"""Run the web server and a django-q2 worker together; one signal stops both (`make run`).

Each child runs in its own session, so a Ctrl-C in the terminal (SIGINT to the whole
foreground process group) or a signal sent to `make run`'s process group reaches only this
launcher. The launcher then sends exactly one SIGTERM to each child: django-q2's qcluster
stops its cluster on it (a second signal while it stops re-enters its handler, which is what
ended earlier runs with a RecursionError), and runserver simply ends. Further signals are
ignored while the children stop; a child that outlives its grace period is killed with its
whole process group. After a stop that a signal asked for the launcher exits 0, so `make`
prints no error line; if a child ends on its own, the other is stopped and the exit status
is 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.2
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent():
    """A preexec_fn: on Linux the child gets SIGTERM if the launcher itself dies (even by
    SIGKILL), so no worker or web server outlives it; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


class Command(BaseCommand):
    help = (
        "Start the development web server (runserver --noreload) and a django-q2 worker "
        "(qcluster) as child processes; SIGINT (Ctrl-C), SIGTERM or SIGHUP stops both."
    )
    requires_system_checks = []  # only launches; the children run (or skip) the checks

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")
        parser.add_argument(
            "--skip-checks",
            action="store_true",
            help="pass --skip-checks to runserver and qcluster",
        )
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=30.0,
            help="seconds each child has to stop after SIGTERM before it is killed (default 30)",
        )

    def handle(self, *args, **opts):
        self.stop_signal = None
        host, port = opts["host"], str(opts["port"])
        addr = f"[{host}]" if ":" in host and not host.startswith("[") else host
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        skip = ["--skip-checks"] if opts["skip_checks"] else []
        commands = [
            ("worker", [sys.executable, manage, "qcluster", *skip]),
            (
                "web server",
                [sys.executable, manage, "runserver", f"{addr}:{port}", "--noreload", *skip],
            ),
        ]

        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._say(
            f"Starting web server on http://{addr}:{port}/ and a django-q2 worker "
            "(Ctrl-C stops both)"
        )
        children = []
        preexec = _die_with_parent()
        try:
            for name, argv in commands:
                if self.stop_signal is not None:
                    break
                children.append(
                    (
                        name,
                        subprocess.Popen(
                            argv,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=preexec,
                        ),
                    )
                )
            ended = self._wait_for_signal_or_exit(children)
        finally:
            # From here on nothing interrupts the stop: one SIGTERM per child, then wait.
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            if children:
                if self.stop_signal == signal.SIGINT and sys.stdout.isatty():
                    self._say("")  # after the terminal's "^C"
                self._say("Stopping the web server and the worker…")
                self._stop(children, opts["stop_timeout"])
        if ended is not None:
            name, code = ended
            raise CommandError(f"The {name} exited with status {code}; stopped the rest.")
        self._say("Stopped.")

    def _on_signal(self, signum, frame):
        if self.stop_signal is None:
            self.stop_signal = signum

    def _wait_for_signal_or_exit(self, children):
        """Block until a stop signal arrives (None) or a child ends on its own (name, code)."""
        while self.stop_signal is None:
            for name, proc in children:
                code = proc.poll()
                if code is not None:
                    return name, code
            time.sleep(POLL_SECONDS)
        return None

    def _stop(self, children, timeout):
        for _, proc in children:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name, proc in children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"The {name} did not stop within {timeout:g} s; killing it.")
                self._killpg(proc)
                proc.wait()
            # Whatever the child left in its session (a qcluster's sentinel and workers, if
            # it was killed), goes with it.
            self._killpg(proc)

    @staticmethod
    def _killpg(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _say(self, text):
        self.stdout.write(text)
        self.stdout.flush()
