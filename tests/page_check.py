"""The review page as a person uses it, in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright).

Used by the integration tests, and by hand on any report:
    python tests/page_check.py REPORT_DIR [--cards N] [--screenshot PNG]
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

# Chromium without a desktop session, sandbox, GPU or any network of its own (Google services, updates).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    return os.environ.get("TRUFOR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    """Why the browser check cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if not chromium_path():
        return "no Chromium found: apt-get install chromium (or set TRUFOR_CHROMIUM to its path)"
    return None


@contextlib.contextmanager
def open_page(index: Path):
    """A headless Chromium page on ``index`` (loaded), with the script errors and the requests that left
    the disk collected: yields (page, errors, remote)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors, remote = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(("file://", "data:")) else None)
            page.goto(Path(index).resolve().as_uri())
            page.wait_for_load_state("load")
            yield page, errors, remote
        finally:
            browser.close()


def check_report(report_dir: Path, expected_cards: int | None = None, screenshot: Path | None = None,
                 detail_screenshot: Path | None = None) -> dict:
    """Load ``index.html`` from disk and use it; raises AssertionError with what a person would see wrong.

    Checks: the number of cards; every image in the page decoded (naturalWidth > 0, the detail
    views' images once opened); sorting by score reverses the order; the filter hides cards; a
    detail view opens and closes; no request leaves the disk and no script error happens.
    Returns what it measured (card uris in order, counts).
    """
    facts: dict = {}
    with open_page(Path(report_dir) / "index.html") as (page, errors, remote):
        cards = page.locator("article.card")
        n = cards.count()
        facts["cards"] = n
        if expected_cards is not None:
            assert n == expected_cards, f"{n} cards on the page, expected {expected_cards}"
        broken = page.evaluate("""() => Array.from(document.images).filter(i => !i.closest('dialog'))
                                  .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)""")
        assert not broken, f"images that did not decode: {broken[:5]}"
        facts["images"] = page.evaluate("() => Array.from(document.images).filter(i => !i.closest('dialog')).length")

        def order() -> list[str]:
            return page.evaluate("() => Array.from(document.querySelectorAll('article.card'))"
                                 ".filter(c => !c.hidden).map(c => c.dataset.uri)")

        def scores() -> list[float]:
            return page.evaluate("() => Array.from(document.querySelectorAll('article.card'))"
                                 ".map(c => Number(c.dataset.score))")

        first = order()
        facts["order"] = first
        assert scores() == sorted(scores(), reverse=True), "cards are not in score order on load"
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=False)
        page.select_option("#sort-key", "score")
        page.click("#sort-dir")  # lowest first
        assert scores() == sorted(scores()), "sorting by score (lowest first) did not reorder the cards"
        if n > 1 and len(set(scores())) > 1:
            assert order() != first, "sorting by score did not change the order"
        page.click("#sort-dir")
        assert order() == first, "sorting back (highest first) did not restore the order"
        if n:
            # Filter by the last card's uri: at least that card stays, and the count line follows.
            needle = first[-1].lower()
            page.fill("#filter", needle)
            visible = order()
            assert first[-1] in visible and all(needle in u.lower() for u in visible), visible
            facts["filtered"] = len(visible)
            page.fill("#filter", "no-such-image-anywhere-0123")
            assert order() == [], "the filter hid nothing"
            assert page.inner_text("#shown-count").startswith("0 of"), page.inner_text("#shown-count")
            page.fill("#filter", "")
            assert len(order()) == n
            page.locator("article.card").first.locator("button.open").click()
            dialog = page.locator("article.card").first.locator("dialog")
            dialog.wait_for(state="visible")
            page.wait_for_function("""() => { const d = document.querySelector('dialog[open]');
                return d && Array.from(d.querySelectorAll('img')).every(i => i.complete); }""")
            bad = page.evaluate("""() => Array.from(document.querySelector('dialog[open]').querySelectorAll('img'))
                                   .filter(i => !(i.naturalWidth > 0)).map(i => i.src)""")
            panels = page.evaluate("() => document.querySelector('dialog[open]').querySelectorAll('img').length")
            assert not bad, f"detail images that did not decode: {bad}"
            facts["detail_panels"] = panels
            if detail_screenshot:
                page.screenshot(path=str(detail_screenshot), full_page=False)
            page.keyboard.press("Escape")
            dialog.wait_for(state="hidden")
        # Nothing from the data ran: only the page's own script exists, no inline handlers.
        facts["pwned"] = page.evaluate("() => window.__pwned ?? null")
        scripts = page.evaluate("() => Array.from(document.scripts).map(s => s.src ? 'src' : s.type)")
        assert scripts == ["src"], f"unexpected scripts in the page: {scripts}"
        handlers = page.evaluate("() => Array.from(document.querySelectorAll('*')).filter(e => "
                                 "Array.from(e.attributes).some(a => a.name.startsWith('on'))).length")
        assert handlers == 0, f"{handlers} elements with inline event handlers"
        assert not remote, f"the page made requests off the disk: {remote[:5]}"
        assert not errors, f"script errors: {errors[:5]}"
    return facts


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir")
    ap.add_argument("--cards", type=int)
    ap.add_argument("--screenshot")
    ap.add_argument("--detail-screenshot")
    a = ap.parse_args()
    if (why := browser_missing()):
        sys.exit(f"cannot check the page: {why}")
    f = check_report(Path(a.report_dir), a.cards, a.screenshot and Path(a.screenshot),
                     a.detail_screenshot and Path(a.detail_screenshot))
    print(json.dumps({k: v for k, v in f.items() if k != "order"}))
