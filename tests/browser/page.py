"""The playground page as a person drives it, for the browser tests (selenium WebDriver)."""

from __future__ import annotations

import time
from dataclasses import dataclass

WAIT_S = 30.0


def wait_for(check, what: str, timeout: float = WAIT_S):
    """Poll check() until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Shown:
    """One ranked row as the page shows it."""

    index: int
    score: str           # the text on the page
    value: float         # data-score: the full-precision number the page got
    text: str
    truncated: bool


class Playground:
    """The page, driven the way a person uses it: type, click Rank, read what is shown."""

    def __init__(self, driver, url: str) -> None:
        self.driver = driver
        driver.get(url)
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"),
                 "the page to load its config")

    def el(self, element_id: str):
        return self.driver.find_element("id", element_id)

    def type(self, element_id: str, text: str) -> None:
        field = self.el(element_id)
        field.clear()
        field.send_keys(text)

    def paste(self, element_id: str, text: str) -> None:
        """Set a field at once, as a paste does (typing 10 KB key by key takes seconds)."""
        self.driver.execute_script(
            "const f = document.getElementById(arguments[0]); f.value = arguments[1];"
            "f.dispatchEvent(new Event('input', {bubbles: true}));", element_id, text)

    def rank(self) -> None:
        before = self.driver.execute_script("return document.body.dataset.ranks || '0'")
        self.el("rank").click()
        wait_for(lambda: self.driver.execute_script("return document.body.dataset.ranks || '0'") != before,
                 "the ranking to finish")

    def results(self) -> list[Shown]:
        rows = self.driver.find_elements("css selector", "#results li")
        return [Shown(int(row.get_attribute("data-index")), row.find_element("class name", "score").text,
                      float(row.get_attribute("data-score")),
                      row.find_element("class name", "text").text,
                      bool(row.find_elements("class name", "cut"))) for row in rows]

    def error(self) -> str:
        box = self.el("error")
        return box.text if box.is_displayed() else ""

    def snippet(self, name: str) -> str:
        return self.el(f"snippet-{name}").get_attribute("textContent")
