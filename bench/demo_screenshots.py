#!/usr/bin/env python
"""The README's demo screenshots, from a fresh demo: seeds the demo store into a temporary
SQLite database (`manage.py demo_setup`, as the first `./run` does), serves it with
runserver, logs in with Chromium (Debian's package, driven by Playwright) as the operator
and as the agent, and writes docs/demo-home.png (the home page) and docs/demo-queue.png
(the escalation queue: waiting, and the agent's own items).

    .venv/bin/python bench/demo_screenshots.py            # writes docs/demo-*.png
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    chromium = shutil.which("chromium")
    if not chromium:
        print("needs Debian's chromium (apt-get install -y chromium)")
        return 2
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{tmp / 'demo.sqlite3'}",
        "REDIS_URL": "",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    python = sys.executable
    port = _port()
    manage = [python, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run(
        [*manage, "demo_setup", "--skip-checks", "--port", str(port)],
        env=env,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            for user, path, out in (
                ("operator", "/", "demo-home.png"),
                ("agent", "queue/", "demo-queue.png"),
            ):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(base + "/accounts/login/")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", "recoup-demo")
                page.click("button[type=submit]")
                page.wait_for_load_state("networkidle")
                if path != "/":
                    page.goto(page.url.rstrip("/") + "/" + path)
                    page.wait_for_load_state("networkidle")
                page.screenshot(path=str(ROOT / "docs" / out), full_page=True)
                print(f"docs/{out} from {page.url}")
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
