"""Take the README's dashboard screenshots from the demo: ``python tools/screenshots.py`` (needs
Playwright and Chromium, as the browser tests do). Writes docs/screenshots/dashboard-{desktop,phone}.png."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("GPUWARDEN_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(url: str, body: dict[str, object] | None = None) -> None:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()


def main() -> int:
    port, state = free_port(), tempfile.mkdtemp(prefix="gpuwarden-shots-")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GPUWARDEN_")},
           "XDG_STATE_HOME": state, "LOCALAPPDATA": state, "GPUWARDEN_HISTORY_INTERVAL_SECONDS": "2"}
    server = subprocess.Popen([sys.executable, "-m", "gpuwarden", "serve", "--demo", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/api/gpus", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        post(url + "/api/models/llama-7b/load", {"gpus": "0"})
        post(url + "/api/models/whisper-large/load", {"gpus": "2"})
        time.sleep(40)  # twenty readings: the sparklines have a shape
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            for name, size in (("desktop", (1440, 1000)), ("phone", (390, 844))):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]}, device_scale_factor=1)
                page.goto(url)
                page.wait_for_timeout(500)
                page.screenshot(path=str(OUT / f"dashboard-{name}.png"), full_page=name == "desktop")
                page.close()
            browser.close()
        for name in ("llama-7b", "whisper-large"):
            post(f"{url}/api/models/{name}/unload")
    finally:
        server.terminate()
        server.wait(20)
    print(f"wrote {OUT}/dashboard-desktop.png and dashboard-phone.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
