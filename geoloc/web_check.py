"""Drive the web demo in a real headless Chromium: the page test (tests/test_web.py) and
`make screenshot` (plots/web_demo.png) both go through these functions.

    python -m geoloc.web_check --model models/export --out plots/web_demo.png
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from geoloc.errors import GeolocError
from geoloc.log import setup_logging

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 1000)  # the viewport, fixed: every screenshot has the same size and layout


@dataclass(frozen=True)
class PageResult:
    state: str  # "done" or "error"
    status: str  # the status line the page shows
    lat: str  # as shown, 5 decimals
    lon: str
    near: str  # the snapshot's nearest city and how far, or "-"
    confidence: str
    answered: str  # the mode, and the views answered together
    note: str  # what the answer notes ("" for none)
    osm_url: str
    hexagons: int  # H3 polygons drawn on the map
    has_point: bool  # the predicted point's marker is drawn


def missing_browser() -> str | None:
    """Why Chromium cannot run here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return (f"{' and '.join(absent)} not found: run `make install` (it installs the Debian "
                f"packages chromium and chromium-driver)")
    return None


@contextlib.contextmanager
def browser(window: tuple[int, int] = WINDOW) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    problem = missing_browser()
    if problem:
        raise GeolocError(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    # The window size includes the browser's own frame; the viewport is what is captured.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def locate_in_page(driver, base_url: str, photo: Path | list[Path], top_k: int = 5,
                   timeout_s: float = 60) -> PageResult:
    """Open the page, choose `photo` (or several: the views of one place) in its file input,
    wait for the answer, read what it shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base_url)
    wait = WebDriverWait(driver, timeout_s)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    k = driver.find_element(By.ID, "top-k")
    k.clear()
    k.send_keys(str(top_k))
    driver.execute_script("arguments[0].blur()", k)  # no blinking caret in screenshots
    photos = photo if isinstance(photo, list) else [photo]
    driver.find_element(By.ID, "photo").send_keys("\n".join(str(Path(p).resolve())
                                                            for p in photos))
    result = driver.find_element(By.ID, "result")
    wait.until(lambda d: result.get_attribute("data-state") in ("done", "error"))

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    return PageResult(
        state=result.get_attribute("data-state"), status=text("status"), lat=text("lat"),
        lon=text("lon"), near=text("near"), confidence=text("confidence"),
        answered=text("answered"),
        note=text("note"),
        osm_url=driver.find_element(By.ID, "osm").get_attribute("href"),
        hexagons=len(driver.find_elements(By.CSS_SELECTOR, "#map polygon.cell")),
        has_point=bool(driver.find_elements(By.CSS_SELECTOR, "#map #prediction-point circle")))


def screenshot(driver, path: Path) -> Path:
    """Save the window as a PNG, under a temporary name first so no half-written file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")  # the driver insists on a .png name
    if not driver.save_screenshot(str(tmp)):
        raise GeolocError(f"could not write the screenshot {path}")
    tmp.replace(path)
    return path


def main() -> None:
    from geoloc.serve import create_app, serving

    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/export"))
    parser.add_argument("--photo", type=Path, help="default: the first JPEG under data/raw")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("plots/web_demo.png"))
    args = parser.parse_args()
    photo = args.photo or next(iter(sorted(Path("data/raw").glob("*/images/*.jpg"))), None)
    if photo is None:
        raise SystemExit("no photo under data/raw: run `dvc repro` (or pass --photo)")
    with serving(create_app(args.model)) as url, browser() as driver:
        shown = locate_in_page(driver, url, photo, args.top_k)
        if shown.state != "done":
            raise SystemExit(f"the page did not locate {photo}: {shown.status}")
        screenshot(driver, args.out)
    log.info("%s: %s, %s (%s); wrote %s", photo, shown.lat, shown.lon, shown.confidence,
             args.out)


if __name__ == "__main__":
    main()
