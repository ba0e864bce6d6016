"""Triggers in the browser: cron with its next fire times, a webhook's URL and
curl command (its token shown once), a manual trigger run with an input."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import snapshot

pytestmark = pytest.mark.browser


def test_cron_webhook_and_manual_triggers(page: Page, api: httpx.Client) -> None:
    project = api.post("/projects", json={"name": f"trig_{uuid.uuid4().hex[:8]}"}).json()
    created = api.post(
        f"/projects/{project['id']}/workflows",
        json={"name": "hooked", "steps": [{"name": "only", "function": "noop"}]},
    )
    workflow_id = created.json()["workflow"]["id"]
    page.goto(f"/ui/workflows/{workflow_id}/triggers")
    expect(page.get_by_text("No triggers yet.")).to_be_visible()

    page.get_by_label("Name", exact=True).fill("nightly")
    page.get_by_label("Schedule (5 fields or @daily …)").fill("61 * * * *")
    page.get_by_role("button", name="Create trigger").click()
    expect(page.locator('[data-error-for="config.schedule"]')).to_be_visible()
    page.get_by_label("Schedule (5 fields or @daily …)").fill("30 2 * * *")
    page.get_by_label("Time zone (IANA)").fill("Europe/Berlin")
    page.get_by_role("button", name="Create trigger").click()
    cron = page.locator("[data-trigger=nightly]")
    expect(cron.get_by_test_id("fire-times").locator("li")).to_have_count(5)

    page.get_by_label("Name", exact=True).fill("hook")
    page.get_by_label("Kind").select_option("webhook")
    page.get_by_role("button", name="Create trigger").click()
    token = page.get_by_test_id("token")
    expect(token).to_be_visible()
    hook = page.locator("[data-trigger=hook]")
    expect(hook).to_contain_text("/hooks/")
    expect(hook.get_by_label("curl example")).to_contain_text("X-Autostep-Token")
    call = api.post(
        hook.locator("code").first.inner_text().removeprefix(str(api.base_url).rstrip("/")),
        headers={"X-Autostep-Token": token.inner_text()},
        json={"from": "hook"},
    )
    assert call.status_code == 202, call.text

    page.get_by_label("Name", exact=True).fill("by_hand")
    page.get_by_label("Kind").select_option("manual")
    page.get_by_label("Preset input (JSON object)").fill('{"region": "eu"}')
    page.get_by_role("button", name="Create trigger").click()
    manual = page.locator("[data-trigger=by_hand]")
    expect(manual).to_be_visible()
    snapshot(page, "triggers")
    manual.get_by_label("Input (merged into the preset)").fill('{"n": 1}')
    manual.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/"))
    heading = page.get_by_role("heading", name=re.compile("^Run "))
    expect(heading.locator("[data-status=succeeded]")).to_be_visible(timeout=45_000)
    job = api.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert job["input"] == {"region": "eu", "n": 1}
    assert job["trigger"] == "manual"
