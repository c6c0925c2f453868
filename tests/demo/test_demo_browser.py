"""vitfer demo in a real browser: ``vitfer demo A B`` started as a process on a free local port,
driven by headless Chromium through Selenium and Debian's chromedriver.

Skipped when Chromium, chromedriver or Selenium is missing, except under
``VITFER_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs Debian's ``chromium`` and
``chromium-driver``), where that is a failure. Screenshots go to ``$VITFER_TEST_ARTEFACTS`` (when
set) or the test's tmp_path.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from demo_helpers import CLASSES, faces_canvas, not_an_image

START_TIMEOUT = 90  # s, for the server process (imports torch and gradio) to print its URL
RESULT_TIMEOUT = 60  # s, for a photo's results to show in the page


def _need(what: str) -> None:
    if os.environ.get("VITFER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (and VITFER_REQUIRE_BROWSER=1)")
    pytest.skip(what)


def _find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium is not installed")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _need("gradio is not installed")
    browser = _find(("chromium", "chromium-browser", "google-chrome"), "VITFER_CHROMIUM")
    chromedriver = _find(("chromedriver",), "VITFER_CHROMEDRIVER")
    if not browser or not chromedriver:
        _need(f"no browser to drive (chromium: {browser}, chromedriver: {chromedriver}); "
              "apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager downloads nothing
    opts = Options()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1500,1800", "--no-first-run", "--disable-extensions", "--disable-background-networking",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"):  # a test-pattern webcam
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server(demo_ckpts, tmp_path_factory):
    """``python -m vitfer.cli demo VIT RESNET --port P``; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio")), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "vitfer.cli", "demo", *map(str, demo_ckpts), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    seen, url, deadline = [], None, time.monotonic() + START_TIMEOUT
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        url = m.group(1) if m else None
    try:
        assert url == f"http://127.0.0.1:{port}/", f"vitfer demo did not start: {''.join(seen)[-2000:]}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    out = Path(os.environ.get("VITFER_TEST_ARTEFACTS") or tmp_path_factory.mktemp("artefacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(driver, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#vitfer-input input[type=file]"))
    return driver.find_element(By.CSS_SELECTOR, "#vitfer-input input[type=file]")


def _screenshot(driver, path: Path) -> Path:
    """The whole page, below the window's fold too (Chromium's DevTools capture)."""
    import base64

    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _texts(driver, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_photo_of_four_faces(driver, server, data_root, tmp_path, artefacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "four_faces.png"
    faces_canvas(data_root, 4, photo)
    _open(driver, server).send_keys(str(photo))
    wait = WebDriverWait(driver, RESULT_TIMEOUT)
    wait.until(lambda d: all(len(_texts(d, f"#vitfer-faces-{i} tr.vitfer-face")) == 4 for i in (0, 1))
               and all(d.find_elements(By.CSS_SELECTOR, f"#vitfer-attention-{i} img") for i in (0, 1)))
    assert "4 faces found" in driver.find_element(By.ID, "vitfer-message").text
    for i in (0, 1):  # one row a pasted face, each labelled with one of the checkpoint's classes
        labels = _texts(driver, f"#vitfer-faces-{i} tr.vitfer-face td.vitfer-label")
        assert len(labels) == 4 and set(labels) <= set(CLASSES), labels
        assert driver.find_elements(By.CSS_SELECTOR, f"#vitfer-annotated-{i} img")  # the boxed photo
        probs = driver.find_element(By.ID, f"vitfer-probs-{i}").text
        assert sum(c in probs for c in CLASSES) == len(CLASSES)  # the bar chart, every class
    assert _texts(driver, "#vitfer-faces-0 tr.vitfer-chosen td")[0] == "#1"
    # choose face 3: every column follows
    driver.find_element(By.CSS_SELECTOR, "#vitfer-face input[value='#3']").click()
    wait.until(lambda d: all((_texts(d, f"#vitfer-faces-{i} tr.vitfer-chosen td") or ["?"])[0] == "#3" for i in (0, 1)))
    wait.until(lambda d: "face #3" in d.find_element(By.ID, "vitfer-probs-1").text)
    assert "4 faces found; showing face #3" in driver.find_element(By.ID, "vitfer-message").text
    time.sleep(0.5)  # let the new images paint
    shot = _screenshot(driver, artefacts / "demo_four_faces.png")
    assert shot.stat().st_size > 50_000
    # the page loaded nothing from outside this machine
    outside = [r for r in driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
               if not r.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert outside == []


def test_a_text_file_named_jpg_gives_a_message(driver, server, tmp_path, artefacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake = not_an_image(tmp_path / "holiday.jpg")
    _open(driver, server).send_keys(str(fake))
    WebDriverWait(driver, RESULT_TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#vitfer-message .vitfer-error"))
    text = driver.find_element(By.ID, "vitfer-message").text
    assert "holiday.jpg is not an image" in text and "Upload a photo" in text
    assert _texts(driver, ".vitfer-faces-html tr.vitfer-face") == []
    assert not driver.find_elements(By.CSS_SELECTOR, ".toast-body")  # no Gradio error toast
    _screenshot(driver, artefacts / "demo_not_an_image.png")


def test_webcam_snapshot(driver, server, artefacts):
    """Chromium's fake camera (a test pattern, no face): the snapshot reaches the app, which says so."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, server)
    wait = WebDriverWait(driver, RESULT_TIMEOUT)

    def button(label: str):
        def find(d):
            hits = [b for b in d.find_elements(By.CSS_SELECTOR, "#vitfer-input button")
                    if label in ((b.get_attribute("aria-label") or "") + "|" + b.text).lower()]
            return hits[0] if hits else False
        return wait.until(find)

    button("capture from camera").click()
    button("click to access webcam").click()
    button("capture photo").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#vitfer-message .vitfer-warn"))
    assert "No face found" in driver.find_element(By.ID, "vitfer-message").text
    assert _texts(driver, ".vitfer-faces-html tr.vitfer-face") == []
    _screenshot(driver, artefacts / "demo_webcam.png")


def test_an_example_runs_with_one_click(driver, server, artefacts):
    """No photo at hand: a click on vitfer's synthetic example shows every face boxed and labelled."""
    import io
    import urllib.request

    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vitfer.demo.core import CHOSEN, OTHER

    _open(driver, server)
    wait = WebDriverWait(driver, RESULT_TIMEOUT)

    def example(d):
        hits = [e for e in d.find_elements(By.CSS_SELECTOR, "#vitfer-examples button, #vitfer-examples tr")
                if e.text.strip() == "7 synthetic faces"]
        return hits[0] if hits else False

    wait.until(example).click()
    wait.until(lambda d: all(len(_texts(d, f"#vitfer-faces-{i} tr.vitfer-face")) == 7 for i in (0, 1))
               and all(d.find_elements(By.CSS_SELECTOR, f"#vitfer-annotated-{i} img") for i in (0, 1)))
    assert "7 faces found" in driver.find_element(By.ID, "vitfer-message").text
    for i in (0, 1):
        rows = driver.find_elements(By.CSS_SELECTOR, f"#vitfer-faces-{i} tr.vitfer-face")
        labels = [r.find_element(By.CSS_SELECTOR, "td.vitfer-label").text for r in rows]
        assert len(labels) == 7 and set(labels) <= set(CLASSES), labels
        boxes = [tuple(int(v) for v in r.find_elements(By.TAG_NAME, "td")[3].text.split(",")) for r in rows]
        # the boxed photo the page shows: each face's box outline and its label band in the box colour
        src = driver.find_element(By.CSS_SELECTOR, f"#vitfer-annotated-{i} img").get_attribute("src")
        with urllib.request.urlopen(src, timeout=20) as r:
            shown = Image.open(io.BytesIO(r.read())).convert("RGB")
        for k, (x, y, w, h) in enumerate(boxes):
            colour = CHOSEN if k == 0 else OTHER
            assert shown.getpixel((x, y + h // 2)) == colour and shown.getpixel((x + w - 1, y + h // 2)) == colour
            band = [shown.getpixel((x + dx, y - dy)) for dx in range(2, 60) for dy in range(3, 20)]  # label above
            assert band.count(colour) > 100 and len(set(band)) > 3, k  # a band of the box colour, text on it
    _screenshot(driver, artefacts / "demo_example.png")
