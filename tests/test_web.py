"""The web demo in a real headless Chromium against the real server (geoloc.web_check drives
the page, as `make screenshot` does)."""

import io

import pytest
import requests
from PIL import Image
from test_serve import photo

from geoloc import web_check
from geoloc.serve import create_app, serving


@pytest.fixture(scope="module")
def server(tiny_snapshot):
    with serving(create_app(tiny_snapshot)) as url:
        yield url


@pytest.fixture
def driver():
    # CI installs Chromium (`make install`): its absence is a failure, never a skip.
    problem = web_check.missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    with web_check.browser() as driver:
        yield driver


def test_chromium_and_its_driver_are_installed():
    problem = web_check.missing_browser()
    assert problem is None, problem


@pytest.mark.parametrize("fmt, top_k", [("JPEG", 3), ("PNG", 6)])
def test_page_shows_the_apis_prediction(server, driver, tmp_path, fmt, top_k):
    path = tmp_path / f"street.{fmt.lower()}"
    path.write_bytes(photo(11, fmt, size=(320, 240)))
    api = requests.post(f"{server}/predict", files={"image": (path.name, path.read_bytes())},
                        params={"top_k": top_k}, timeout=30).json()

    shown = web_check.locate_in_page(driver, server, path, top_k=top_k)

    assert shown.state == "done", shown.status
    assert (shown.lat, shown.lon) == (f"{api['lat']:.5f}", f"{api['lon']:.5f}")
    assert api["city"] and shown.near == f"{api['city']}, {api['city_km']:.1f} km away"
    assert shown.confidence == f"{100 * api['confidence']:.1f}%"
    assert shown.osm_url == api["osm_url"]
    assert shown.has_point and shown.hexagons == len(api["top"]) == top_k
    screenshot = web_check.screenshot(driver, tmp_path / "page.png")
    assert Image.open(screenshot).size == web_check.WINDOW


def test_the_views_of_one_place_are_answered_together(retrieval_snapshot, driver, tmp_path):
    """Several photos chosen at once: one request, the place answer the API gives, shown with
    its mode and number of views."""
    from conftest import noisy_photo

    views = []
    for seed in range(4, 8):
        views.append(tmp_path / f"view{seed}.png")
        noisy_photo(seed).save(views[-1])
    with serving(create_app(retrieval_snapshot)) as url:
        files = [("image", (path.name, path.read_bytes())) for path in views]
        api = requests.post(f"{url}/predict", files=files, timeout=30).json()
        shown = web_check.locate_in_page(driver, url, views)
        too_many = web_check.locate_in_page(driver, url, views * 3)
    assert shown.state == "done", shown.status
    assert (shown.lat, shown.lon) == (f"{api['lat']:.5f}", f"{api['lon']:.5f}")
    assert shown.answered == "in mode place, 4 views of one place together"
    assert shown.status == "Located 4 views of one place."
    assert too_many.state == "error"
    assert too_many.status == "12 photos; the limit is 8 views of one place."


def test_page_shows_why_a_photo_was_refused(server, driver, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"not a photo\n" * 10)
    shown = web_check.locate_in_page(driver, server, path)
    assert shown.state == "error"
    assert "Refused (415)" in shown.status and "JPEG, PNG or WebP" in shown.status
    assert not shown.has_point and shown.hexagons == 0


def test_page_checks_the_size_limit_before_uploading(tiny_snapshot, driver, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(photo(12, "PNG", size=(400, 400)))
    with serving(create_app(tiny_snapshot, max_upload_bytes=50_000)) as url:
        shown = web_check.locate_in_page(driver, url, path)
    assert shown.state == "error"
    assert f"This photo is {path.stat().st_size / 1e6:.3g} MB; the limit is 0.05 MB." == \
        shown.status


def test_dropping_a_photo_on_the_page_locates_it(server, driver, tmp_path):
    """A drop carries a File in its DataTransfer: build one in the page from the photo's bytes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data = photo(13)
    driver.get(server)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body")
                                    .get_attribute("data-ready"))
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        document.getElementById("dropzone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """, __import__("base64").b64encode(data).decode())
    result = driver.find_element(By.ID, "result")
    WebDriverWait(driver, 30).until(lambda d: result.get_attribute("data-state") == "done")
    api = requests.post(f"{server}/predict", files={"image": ("a.jpg", io.BytesIO(data))},
                        timeout=30).json()
    assert driver.find_element(By.ID, "lat").text == f"{api['lat']:.5f}"
