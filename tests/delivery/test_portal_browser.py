"""The portal in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): open the link, ask for the passcode, read it from the receiving SMTP server, enter it,
read the message, download the attachment byte-identical, reply; five wrong passcodes lock;
withdrawn and expired messages show a clear page. Screenshots of the read page at phone and
desktop size go to test-output/ (or $MAILWARD_TEST_OUTPUT).

Selenium is synchronous and the mail world lives on the test's event loop, so every browser
call runs in a thread (`asyncio.to_thread`)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.delivery.conftest import MailWorld
from tests.delivery.portal_world import DOCTOR, MARKER, PDF, start_portal_world
from tests.polling import eventually

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="scripts/test installs chromium and chromium-driver")
OUTPUT = Path(os.environ.get("MAILWARD_TEST_OUTPUT", "test-output"))
PHONE, DESKTOP = (390, 844), (1366, 900)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver, downloads
    driver.quit()


def text_of(driver: WebDriver) -> str:
    return str(WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.TAG_NAME, "main"))).text)


def gone(element: WebElement) -> Callable[[WebDriver], bool]:
    """The element's document was replaced (chromedriver sometimes says so with a generic error
    instead of a stale-element one)."""
    def check(_: WebDriver) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:  # StaleElementReferenceException is one
            return True
        return False
    return check


def loaded(driver: WebDriver) -> None:
    """Wait until the current page has finished loading (not the one being left)."""
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def submit(driver: WebDriver, button_id: str) -> None:
    """Click a form's button and wait until the next page has replaced this one."""
    loaded(driver)
    button = WebDriverWait(driver, 10).until(expected_conditions.element_to_be_clickable((By.ID, button_id)))
    button.click()
    WebDriverWait(driver, 10).until(gone(button))
    loaded(driver)


async def request_passcode(driver: WebDriver, link: str) -> None:
    await asyncio.to_thread(driver.get, link)
    await asyncio.to_thread(submit, driver, "send-code")


async def enter(driver: WebDriver, code: str) -> None:
    def type_and_submit() -> None:
        loaded(driver)
        field = WebDriverWait(driver, 10).until(
            expected_conditions.presence_of_element_located((By.ID, "code")))
        field.clear()
        field.send_keys(code + Keys.RETURN)  # submits the form, as a person pressing Enter would
        WebDriverWait(driver, 10).until(gone(field))
        loaded(driver)
    await asyncio.to_thread(type_and_submit)


async def test_recipient_reads_downloads_and_replies_in_chromium(
        world: MailWorld, tmp_path: Path, browser: tuple[WebDriver, Path]) -> None:
    driver, downloads = browser
    portal = await start_portal_world(world, tmp_path)
    link = await portal.send_results()
    await asyncio.to_thread(driver.get, link)
    assert MARKER not in await asyncio.to_thread(text_of, driver)  # the link alone shows nothing
    before = len(portal.patient.messages)
    await request_passcode(driver, link)
    await enter(driver, await portal.passcode(before))
    page = await asyncio.to_thread(text_of, driver)
    assert "Lab results for Jane Roe" in page and MARKER in page and driver.current_url.endswith("/read")

    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in (("phone", PHONE), ("desktop", DESKTOP)):
        await asyncio.to_thread(driver.set_window_size, width, height)
        await asyncio.to_thread(driver.save_screenshot, str(OUTPUT / f"portal-read-{name}.png"))
    assert (OUTPUT / "portal-read-phone.png").stat().st_size > 1000

    await asyncio.to_thread(lambda: driver.find_element(By.LINK_TEXT, "labs.pdf").click())
    downloaded = await eventually(lambda: [p for p in downloads.glob("*")
                                           if not p.name.endswith(".crdownload")])
    assert downloaded[0].read_bytes() == PDF

    def reply() -> None:
        driver.find_element(By.ID, "reply").send_keys("Thank you, I will call the office.")
        submit(driver, "send-reply")
    await asyncio.to_thread(reply)
    [answer] = await eventually(lambda: portal.clinic.messages)
    assert answer.recipients == [DOCTOR] and answer.tls_version is not None
    assert b"Thank you, I will call the office." in answer.content


async def test_five_wrong_passcodes_lock_in_chromium(world: MailWorld, tmp_path: Path,
                                                     browser: tuple[WebDriver, Path]) -> None:
    driver, _ = browser
    portal = await start_portal_world(world, tmp_path)
    link = await portal.send_results()
    before = len(portal.patient.messages)
    await request_passcode(driver, link)
    code = await portal.passcode(before)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        await enter(driver, wrong)
    await asyncio.to_thread(WebDriverWait(driver, 10).until,
                            lambda d: "locked" in d.find_element(By.TAG_NAME, "main").text)
    assert not driver.find_elements(By.ID, "code")  # no way to try again while locked


async def test_withdrawn_and_expired_messages_show_a_clear_page(world: MailWorld, tmp_path: Path,
                                                               browser: tuple[WebDriver, Path]) -> None:
    driver, _ = browser
    portal = await start_portal_world(world, tmp_path)
    link = await portal.send_results()
    from gateway.portal.store import open_store

    store = open_store(portal.store_dir, tmp_path / "portal.key")
    [message_id] = store.ids()
    store.remove(message_id, "revoked")
    await asyncio.to_thread(driver.get, link)
    page = await asyncio.to_thread(text_of, driver)
    assert "withdrawn" in page and MARKER not in page
    store.remove(message_id, "expired")
    await asyncio.to_thread(driver.get, link)
    assert "expired" in await asyncio.to_thread(text_of, driver)
