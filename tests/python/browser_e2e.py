"""Drives headless Chromium through a running gatehouse with browser sessions on, via a
chromedriver the caller started. Usage:

    browser_e2e.py DRIVER_URL CHROMIUM USER_DATA_DIR GATEWAY_URL LISTED_ORIGIN UNLISTED_ORIGIN \
        TOKEN_SECONDS

LISTED_ORIGIN and UNLISTED_ORIGIN serve /attack.html and /spa.html (tests/it/chromium.rs); the
gateway's `/data` route allows LISTED_ORIGIN with credentials, nothing else allows either.

Every wait is bounded; the browser is quit in `finally` (the caller also kills chromedriver and
anything left under USER_DATA_DIR by PID)."""
import json
import sys
import time
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

driver_url, chromium, user_data_dir, gw, listed, unlisted, token_seconds = sys.argv[1:8]
token_seconds = float(token_seconds)
# Each wait for a page or a script. Generous: CI runs this beside the rest of the suite on two
# cores, and a fresh machine's first Chromium start is slow.
WAIT = 30
# The first navigation also waits for the browser to finish starting.
FIRST_WAIT = 90

options = webdriver.ChromeOptions()
options.binary_location = chromium
for arg in [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--user-data-dir={user_data_dir}",
]:
    options.add_argument(arg)
# Network events, to read the status the gateway gave a request page script cannot see.
options.set_capability("goog:loggingPrefs", {"performance": "ALL"})


STARTED = time.monotonic()


def step(what):
    """Names the step under way, with the seconds since the start: a failure's report starts
    from the last one printed."""
    print(f"step {time.monotonic() - STARTED:5.1f}s: {what}", flush=True)


def path_of(url):
    return urlparse(url).path


def wait_for_path(driver, path):
    try:
        WebDriverWait(driver, WAIT).until(lambda d: path_of(d.current_url) == path)
    except Exception:
        print(f"waiting for {path}, at {driver.current_url}:\n{driver.page_source[:1500]}")
        raise


def performance_log(driver):
    # A remote driver has no get_log(); chromedriver serves the same command.
    return driver.execute("getLog", {"type": "performance"})["value"]


def statuses_for(driver, suffix):
    """Statuses Chromium received for requests whose URL ends with `suffix`, from the network
    events logged since the last call. Chromium delivers those events a while after page script
    saw the answers (seconds on a busy machine), so this reads the log until every such request
    has its status, or WAIT passes. Returns the statuses and how many such requests were sent."""
    entries = []
    deadline = time.monotonic() + WAIT
    while True:
        entries += performance_log(driver)
        messages = [json.loads(entry["message"])["message"] for entry in entries]
        # The extra-info events may come before the request's own.
        ids = {
            m["params"]["requestId"]
            for m in messages
            if m["method"] == "Network.requestWillBeSent"
            and m["params"]["request"]["url"].endswith(suffix)
        }
        statuses = {}
        for m in messages:
            params = m.get("params", {})
            if params.get("requestId") not in ids:
                continue
            if m["method"] == "Network.responseReceivedExtraInfo":
                statuses.setdefault(params["requestId"], params["statusCode"])
            elif m["method"] == "Network.responseReceived":
                statuses.setdefault(params["requestId"], params["response"]["status"])
        if (ids and ids <= statuses.keys()) or time.monotonic() > deadline:
            return sorted(statuses.values()), len(ids)
        time.sleep(0.2)


step("start the browser")
driver = webdriver.Remote(command_executor=driver_url, options=options)
try:
    # Warm up on a page of the listed origin, which asks nothing of the gateway.
    step("warm up")
    driver.set_page_load_timeout(FIRST_WAIT)
    driver.get(listed + "/warm-up")
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)

    # A protected page sends the browser to the sign-in page.
    step("open a protected page")
    driver.get(gw + "/app/page")
    wait_for_path(driver, "/auth/sign_in")
    assert "gatehouse" in driver.title, driver.title
    for field in ["username", "password"]:
        label = driver.find_element(By.CSS_SELECTOR, f"label[for={field}]")
        assert label.is_displayed(), field
    step("sign in")
    driver.find_element(By.ID, "username").send_keys("alice")
    driver.find_element(By.ID, "password").send_keys("correct-horse")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # Signed in: back where the browser was going, with the upstream's content.
    wait_for_path(driver, "/app/page")
    assert '"ok":true' in driver.page_source, driver.page_source

    step("check the cookie")
    # The session cookie is HttpOnly: page script cannot read it.
    visible = driver.execute_script("return document.cookie")
    assert "gatehouse" not in visible, visible
    cookies = {c["name"]: c for c in driver.get_cookies()}
    assert cookies["gatehouse"]["httpOnly"] is True, cookies
    assert cookies["gatehouse"]["sameSite"] == "Lax", cookies

    step("reload after the access token expired")
    # After the access token expired, a reload still works: the gateway minted a new one.
    time.sleep(token_seconds + 1.5)
    driver.refresh()
    wait_for_path(driver, "/app/page")
    assert '"ok":true' in driver.page_source, driver.page_source

    step("cross-site POST to a route without CORS")
    # A page on another origin (same site: another port of 127.0.0.1, so SameSite=Lax sends
    # the cookie along) posts text/plain with credentials, which needs no preflight, to `/api`,
    # a route without CORS: the gateway's cross-site check must refuse it, although the same
    # origin is trusted with credentials on `/data`.
    performance_log(driver)  # drop what came before
    driver.get(listed + "/attack.html?gw=" + gw)
    WebDriverWait(driver, WAIT).until(lambda d: d.title.startswith("done:"))
    assert driver.title == "done:TypeError", driver.title  # no CORS: unreadable
    statuses, sent = statuses_for(driver, "/api/transfer")
    assert sent and statuses == [403] * sent, (statuses, sent)

    def spa_results(origin):
        driver.get(origin + "/spa.html?gw=" + gw)
        WebDriverWait(driver, WAIT).until(lambda d: d.title == "done")
        return driver.execute_script("return window.results")

    # The single-page app on the listed origin reads every answer of the CORS route: the GET,
    # the JSON POST after the preflight the gateway answered, and the text/plain POST (a trusted
    # origin passes the cross-site check). The Rust side checks the upstream saw alice.
    step("single-page app on the listed origin")
    results = spa_results(listed)
    for call in ["get", "json", "plain"]:
        result = results[call]
        assert result.get("status") == 200, (call, results)
        assert json.loads(result["body"])["ok"] is True, (call, results)
    assert json.loads(results["json"]["body"])["body_len"] > 0, results

    step("single-page app on an unlisted origin")
    # The same page on an unlisted origin reads nothing: the GET's answer is withheld, the
    # preflight refused, and the text/plain POST refused by the cross-site check.
    performance_log(driver)
    results = spa_results(unlisted)
    for call in ["get", "json", "plain"]:
        assert results[call] == {"error": "TypeError"}, (call, results)
    statuses, sent = statuses_for(driver, "/data/notes")
    assert sent and statuses == [403] * sent, (statuses, sent)

    step("sign out")
    # Sign out: the page's button ends the session, and the protected page asks to sign in.
    driver.get(gw + "/auth/sign_out")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for_path(driver, "/auth/sign_in")
    driver.get(gw + "/app/page")
    wait_for_path(driver, "/auth/sign_in")
    print("browser e2e ok")
except Exception as error:
    # One short report (the caller shows the output's tail): what failed, where the browser was.
    print(f"FAILED: {type(error).__name__}: {str(error)[:1500]}")
    try:
        print(f"at {driver.current_url}, title {driver.title!r}")
    except Exception:
        pass
    raise SystemExit(1)
finally:
    driver.quit()
