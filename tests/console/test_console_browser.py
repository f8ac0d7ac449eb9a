"""The console in a real headless Chromium: sign in with the password and a TOTP code (enrolled
on the first sign-in from the key shown beside the QR code; a wrong code first is refused and
counted), open a held message, release it
with a reason, and it is delivered; trace and report pages render. Screenshots of the held list,
a held message, a trace and a report at phone and desktop width go to test-output/."""

from __future__ import annotations

import asyncio
import json
import re

import pyotp
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.console.conftest import PASSWORD, Console
from tests.delivery.test_portal_browser import (  # noqa: F401  # the browser fixture and its helpers
    DESKTOP,
    OUTPUT,
    PHONE,
    browser,
    loaded,
    pytestmark,
    submit,
    text_of,
)
from tests.polling import eventually


def shoot(driver: WebDriver, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for size, (width, height) in (("phone", PHONE), ("desktop", DESKTOP)):
        driver.set_window_size(width, height)
        loaded(driver)
        driver.save_screenshot(str(OUTPUT / f"console-{name}-{size}.png"))
    driver.set_window_size(*DESKTOP)


async def test_reviewer_signs_in_releases_and_traces_in_chromium(
        console: Console, browser: tuple[WebDriver, object]) -> None:  # noqa: F811
    driver, _ = browser
    await console.add_user("rev", "reviewer")
    queue_id = await console.hold(subject="Referral for Jane Roe")

    def sign_in() -> None:
        driver.get(f"{console.base}/login")
        driver.find_element(By.ID, "name").send_keys("rev")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        submit(driver, "sign-in")
        secret = driver.find_element(By.ID, "totp-secret").text
        assert driver.find_element(By.CSS_SELECTOR, ".qr svg")  # the QR code, drawn server-side
        driver.find_element(By.ID, "code").send_keys("000000" if pyotp.TOTP(secret).now() != "000000"
                                                     else "111111")
        submit(driver, "verify")
        assert "That code is not right" in text_of(driver)  # counted towards the lockout
        driver.find_element(By.ID, "code").send_keys(pyotp.TOTP(secret).now())
        submit(driver, "verify")
    await asyncio.to_thread(sign_in)
    listing = await asyncio.to_thread(text_of, driver)
    assert driver.current_url.endswith("/held") and "ssn-review" in listing
    await asyncio.to_thread(shoot, driver, "held")

    def open_and_release() -> str:
        driver.find_element(By.CSS_SELECTOR, f'a[href="/held/{queue_id}"]').click()
        loaded(driver)
        page = text_of(driver)
        shoot(driver, "message")
        driver.find_element(By.ID, "reason").send_keys("confirmed with the referring physician")
        submit(driver, "release")
        return page + "\n---\n" + text_of(driver)
    pages = await asyncio.to_thread(open_and_release)
    assert "Referral for Jane Roe" in pages and "1 message(s) released" in pages
    await eventually(lambda: len(console.sink.messages) == 1, timeout=20)

    def trace_and_report() -> tuple[str, str]:
        driver.get(f"{console.base}/trace?recipient=dr%40clinic.test")
        loaded(driver)
        trace = text_of(driver)
        shoot(driver, "trace")
        driver.get(f"{console.base}/reports")
        loaded(driver)
        report = text_of(driver)
        shoot(driver, "report")
        return trace, report
    trace, report = await asyncio.to_thread(trace_and_report)
    assert queue_id in trace and "released" in trace and "delivered" in trace
    assert re.search(r"\d+ messages received", report)
    assert (OUTPUT / "console-held-phone.png").stat().st_size > 1000
    directory = console.gateway.gateway.audit.directory
    assert directory is not None
    failed = [json.loads(line) for path in directory.glob("audit-*.jsonl")
              for line in path.read_text().splitlines() if '"console_signin_failed"' in line]
    assert [(r["user"], r["reason"]) for r in failed] == [("rev", "code")]
