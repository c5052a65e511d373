"""A headless Chromium driven through the DevTools protocol (websocket-client), for tests that use a page as a
person would: keys, wheel, clicks, reloads, downloads and screenshots. Debian's /usr/bin/chromium."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: DevTools key descriptions of the keys the tests press: (key, code, Windows virtual key code).
KEYS = {"ArrowUp": ("ArrowUp", 38), "ArrowDown": ("ArrowDown", 40), "ArrowLeft": ("ArrowLeft", 37),
        "ArrowRight": ("ArrowRight", 39), "PageUp": ("PageUp", 33), "PageDown": ("PageDown", 34),
        "Enter": ("Enter", 13), "Escape": ("Escape", 27)}


class Chromium:
    """One headless browser with one page; ``profile`` is its user-data folder (localStorage lives there)."""

    def __init__(self, profile: Path, downloads: Path, size: tuple[int, int] = (1920, 1080)):
        import websocket  # the test extra's websocket-client

        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.browser = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.ids = 0
        downloads.mkdir(parents=True, exist_ok=True)
        self._send(self.browser, "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        self.resize(*size)

    def _send(self, ws, method: str, **params) -> dict:
        self.ids += 1
        ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def send(self, method: str, **params) -> dict:
        return self._send(self.ws, method, **params)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited); a page exception raises."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{expression} stayed false for {timeout} s")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        time.sleep(0.2)
        self.wait_for("document.readyState === 'complete'")

    def reload(self) -> None:
        self.send("Page.reload")
        time.sleep(0.2)
        self.wait_for("document.readyState === 'complete'")

    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def press(self, key: str) -> None:
        """Press and release a key: a named key of :data:`KEYS` or one character."""
        if key in KEYS:
            code, vk = KEYS[key]
            args = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
            if key == "Enter":
                args["text"] = "\r"  # what makes Enter submit a form
        else:
            args = {"key": key, "text": key, "code": f"Key{key.upper()}" if key.isalpha() else f"Digit{key}",
                    "windowsVirtualKeyCode": ord(key.upper())}
        self.send("Input.dispatchKeyEvent", type="keyDown", **args)
        self.send("Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in args.items() if k != "text"})

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", text=text)

    def centre(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        return box[0], box[1]

    def click(self, selector: str) -> None:
        x, y = self.centre(selector)
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def wheel(self, selector: str, delta_y: float) -> None:
        x, y = self.centre(selector)
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.send("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=delta_y)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        for ws in (getattr(self, "ws", None), getattr(self, "browser", None)):
            if ws is not None:
                ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
