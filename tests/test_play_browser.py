"""End to end in headless Chromium (Debian's /usr/bin/chromium + chromedriver, driven by selenium): open the
page, start from a dataset frame, an uploaded picture and a sketch, press keys and see the canvas change,
read the latency figures, download a recording and decode it."""

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from playworld.play.config import PlayConfig
from playworld.play.server import PlayServer
from tiny_world import SIZE, decode_video, tiny_models

from helpers import make_dataset

torch.set_num_threads(1)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are absent (Debian: apt-get install -y chromium chromium-driver; "
                "`make test` installs them when run as root)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import uvicorn

    data = make_dataset(tmp_path_factory.mktemp("data"), episodes=2, length=6, size=SIZE)
    server = PlayServer(tiny_models(), PlayConfig(steps=1, context_frames=4), data=data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait(driver, script, timeout=20.0):
    """Poll a JS expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}; errors on the page: "
                         f"{driver.execute_script('return window.playworld.errors')}")


def canvas(driver) -> str:
    return driver.execute_script("return document.getElementById('world').toDataURL()")


def test_play_in_a_real_browser(url, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(url)
    hello = wait(browser, "window.playworld.hello")
    assert hello["num_actions"] == 4 and hello["dataset"] == {"prompts": 12, "episodes": 2, "frames": 12}
    assert browser.execute_script("return getComputedStyle(document.getElementById('world')).imageRendering") \
        == "pixelated"

    browser.find_element(By.ID, "dataset-btn").click()  # a dataset frame
    wait(browser, "window.playworld.frames === 1")
    before = canvas(browser)
    body = browser.find_element(By.TAG_NAME, "body")
    changed = False
    for i, key in enumerate("2314"):
        body.send_keys(key)
        wait(browser, f"window.playworld.frames === {i + 2}")
        changed |= canvas(browser) != before
    assert changed, "the canvas never changed after key presses"
    last = browser.execute_script("return window.playworld.last")
    assert last["step"] == 4 and last["history"] == "2,3,1,4" and last["label"] == "4"
    rtt = float(browser.find_element(By.ID, "rtt").text)
    assert 0 < rtt < 10_000 and float(browser.find_element(By.ID, "ms").text) > 0
    assert browser.find_element(By.ID, "action").text == "4"

    picture = tmp_path / "photo.png"  # an uploaded picture, not the model's size
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(picture)
    browser.find_element(By.ID, "upload").send_keys(str(picture))
    wait(browser, "window.playworld.frames === 6 && window.playworld.last.step === 0")
    body.send_keys("1")
    wait(browser, "window.playworld.frames === 7")

    browser.find_element(By.ID, "rec-gif").click()  # download the recording (prompt + one step)
    deadline = time.monotonic() + 20
    while not list(browser.downloads.glob("playworld.gif")) and time.monotonic() < deadline:
        time.sleep(0.1)
    path = Path(browser.downloads / "playworld.gif")
    assert path.is_file(), f"no download in {list(browser.downloads.iterdir())}"
    assert decode_video(path).shape == (2, 4 * SIZE, 4 * SIZE, 3)

    sketch = browser.find_element(By.ID, "sketch")  # a sketch drawn on the page
    ActionChains(browser).move_to_element_with_offset(sketch, -50, -50).click_and_hold() \
        .move_by_offset(80, 60).move_by_offset(20, -70).release().perform()
    browser.find_element(By.ID, "sketch-btn").click()
    wait(browser, "window.playworld.frames === 8 && window.playworld.last.step === 0")
    assert browser.execute_script("return window.playworld.errors.length") == 0
