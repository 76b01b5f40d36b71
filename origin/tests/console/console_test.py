"""The console in a real headless Chromium, against a running origin with traffic.

Run by origin/tests/it/console.rs, which starts the origin and the traffic and passes
ALLOT_URL, VIEWER_TOKEN, MANAGER_TOKEN, REDIS_PORT (the last steps shut that Redis down)
and ALLOT_SCREENSHOT (a path for a screenshot of the placement page). Exits non-zero, saying what failed, if anything does.
"""

import json
import os
import re
import subprocess
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["ALLOT_URL"]
VIEWER = os.environ["VIEWER_TOKEN"]
MANAGER = os.environ["MANAGER_TOKEN"]
SLOW = 20_000  # ms: a control round and a refresh


def api(method, path, token, body=None, if_match=None):
    req = urllib.request.Request(URL + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if if_match:
        req.add_header("If-Match", if_match)
    with urllib.request.urlopen(req) as r:
        return r.status, r.headers.get("ETag"), json.loads(r.read() or b"null")


def sign_in(page, token):
    page.get_by_label("Admin token").fill(token)
    page.get_by_label("Admin token").press("Enter")  # the keyboard is enough


def windows_shown(page):
    text = page.locator("#h-history ~ p.meta").inner_text()
    return int(re.search(r"(\d+) windows", text).group(1))


def main():
    problems = []
    try:
        steps(problems)
    except BaseException:
        print("\n".join(problems))
        raise
    if problems:
        raise SystemExit("\n".join(problems))
    print("console: every step passed")


def steps(problems):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        # Script errors fail the test; the browser's own log lines for 4xx answers the
        # console handles (422, 412, 401) do not.
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                and problems.append(f"console error: {m.text}"))
        try:
            flow(page)
        except BaseException:
            problems.append("the page showed:\n" + page.locator("main").inner_text())
            raise
        browser.close()


def flow(page):
    # A viewer: a wrong token is refused, the right one signs in.
    page.goto(URL + "/console")
    sign_in(page, "not-a-token")
    expect(page.get_by_role("alert")).to_contain_text("not known")
    sign_in(page, VIEWER)
    expect(page.locator("#who")).to_have_text("vic (viewer)")

    # The list flags the placement whose target cannot be met.
    web_only = page.get_by_role("row").filter(has_text="web_only")
    expect(web_only).to_contain_text("Infeasible", timeout=SLOW)
    expect(page.get_by_role("row").filter(has_text="home_feed")).to_contain_text(re.compile("On target|Converging"), timeout=SLOW)

    # A placement's chart fills while traffic runs.
    page.get_by_role("link", name="home_feed").click()
    expect(page.locator('svg.chart[data-campaign="A"]')).to_be_visible(timeout=SLOW)
    first = windows_shown(page)
    page.wait_for_function(f"() => /The last (\\d+) windows/.exec(document.body.innerText)?.[1] > {first}", timeout=SLOW)
    expect(page.locator("#health .badge")).to_be_visible()
    # A viewer previews but cannot save.
    expect(page.locator("#save-button")).to_have_count(0)
    expect(page.get_by_label("Campaign 1 target share, percent")).to_be_disabled()

    # A manager.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, MANAGER)
    expect(page.locator("#who")).to_have_text("mia (manager)")
    page.get_by_role("link", name="home_feed").click()
    share_a = page.get_by_label("Campaign 1 target share, percent")
    share_b = page.get_by_label("Campaign 2 target share, percent")

    # A field error, next to its field.
    share_a.fill("150")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#f-0-rate-error")).to_contain_text("between 0 and 1")
    expect(share_a).to_have_attribute("aria-invalid", "true")

    # A preview of an infeasible edit shows the best achievable share, and saves nothing.
    share_a.fill("50")
    page.get_by_label("Campaign 2 platforms").fill("web")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview")).to_contain_text("best achievable", timeout=SLOW)
    expect(page.locator("#preview")).to_contain_text("Some targets cannot be met together")
    _, _, stored = api("GET", "/v1/placements/home_feed", MANAGER)
    assert stored["campaigns"][1]["eligibility"]["platforms"] == [], stored

    # An edit saved.
    page.get_by_label("Campaign 2 platforms").fill("")
    share_b.fill("25")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#form-status")).to_contain_text("Saved")
    _, etag, stored = api("GET", "/v1/placements/home_feed", MANAGER)
    assert abs(stored["campaigns"][1]["rate"] - 0.25) < 1e-9, stored

    # Someone else saves meanwhile: a 412, shown as a conflict, then resolved.
    theirs = dict(stored, campaigns=[dict(stored["campaigns"][0], rate=0.45), stored["campaigns"][1]])
    status, _, _ = api("PUT", "/v1/placements/home_feed", MANAGER, theirs, if_match=etag)
    assert status == 200, status
    share_b.fill("20")
    page.get_by_role("button", name="Save").click()
    conflict = page.locator("#conflict")
    expect(conflict).to_contain_text("Someone changed these targets")
    expect(conflict).to_contain_text("A: 45.0 %")
    conflict.get_by_role("button", name="Save mine over theirs").click()
    expect(page.locator("#form-status")).to_contain_text("Saved")
    _, _, stored = api("GET", "/v1/placements/home_feed", MANAGER)
    assert abs(stored["campaigns"][0]["rate"] - 0.5) < 1e-9 and abs(stored["campaigns"][1]["rate"] - 0.2) < 1e-9, stored

    # The API reference, both documents rendered.
    page.get_by_role("link", name="API reference").click()
    expect(page.locator("main")).to_contain_text("PUT /v1/placements/{id}")
    expect(page.locator("main")).to_contain_text("GET /v1/ad")
    page.go_back()

    # The changes are in the placement's trail.
    expect(page.locator("ol.audit li")).to_have_count(4, timeout=SLOW)
    if os.environ.get("ALLOT_SCREENSHOT"):
        page.reload()
        expect(page.locator('svg.chart[data-campaign="A"]')).to_be_visible(timeout=SLOW)
        page.screenshot(path=os.environ["ALLOT_SCREENSHOT"], full_page=True)

    # Hostile: markup typed into a field comes back in the 422's message, and is shown
    # as text, never run.
    attack = '<img src=x onerror="window.pwned=1">'
    page.get_by_label("Campaign 1 platforms").fill(attack)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#f-0-eligibility\\.platforms-error")).to_contain_text("<img src=x onerror=")
    assert page.evaluate("() => window.pwned === undefined && document.querySelectorAll('main img').length === 0")
    page.get_by_label("Campaign 1 platforms").fill("")

    # Redis gone: a save is refused with the reason, and the delivery view says it
    # cannot read, instead of showing stale numbers as current.
    subprocess.run(["redis-cli", "-p", os.environ["REDIS_PORT"], "shutdown", "nosave"], check=False, capture_output=True)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#form-status")).to_contain_text("Not saved: storage unavailable", timeout=SLOW)
    expect(page.locator("#h-delivery ~ p")).to_contain_text("storage unavailable", timeout=SLOW)


if __name__ == "__main__":
    main()
