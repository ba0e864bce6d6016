"""The job page of a fan-out wider than a page: its items in order, page by page, live.

A run waits a moment in its first step, so the page is open before the
fan-out exists; the fan-out's 120 items then appear (the page reads the job
again for them) and each goes from queued to succeeded on the first page by
the job's websocket events alone. Paging reads the rest in item order.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import snapshot

pytestmark = pytest.mark.browser

#: Milliseconds a run may take to reach a state in the page.
RUN_MS = 45_000
ITEMS = 120


def shown_items(items: Locator) -> list[int]:
    """The item indexes of the rows of a fan-out's table, top to bottom."""
    return [
        int(i)
        for i in items.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.item)")
    ]


def test_a_wide_fan_out_pages_through_its_items_in_order(page: Page, api: httpx.Client) -> None:
    project = api.post("/projects", json={"name": f"wide_{uuid.uuid4().hex[:8]}"}).json()
    definition = {
        "name": "wide",
        "steps": [
            {
                "name": "wait",
                "function": "delay",
                "config": {"seconds": 1.5},
                "next": [{"to": "fan"}],
            },
            {
                "name": "fan",
                "function": "t_item",
                "for_each": "input.items",
                "config": {"sleep": 0.05},
            },
        ],
    }
    created = api.post(f"/projects/{project['id']}/workflows", json=definition)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["workflow"]["id"]
    job_input = {"items": [{"n": n} for n in range(ITEMS)]}
    job = api.post(f"/workflows/{workflow_id}/jobs", json={"input": job_input}).json()

    page.goto(f"/ui/jobs/{job['id']}")  # during `wait`: the fan-out is not there yet
    items = page.get_by_test_id("items-fan")
    range_ = items.get_by_test_id("items-range")
    expect(range_).to_have_text("Items 1\N{EN DASH}50 of 120", timeout=RUN_MS)
    succeeded = items.locator("tbody tr [data-status=succeeded]")
    expect(succeeded).to_have_count(50, timeout=RUN_MS)
    assert shown_items(items) == list(range(50))
    items.locator("tr[data-item='7']").get_by_text("input", exact=True).click()
    expect(page.get_by_label("input of fan [7]")).to_contain_text('"n": 7')
    heading = page.get_by_role("heading", name=re.compile("^Run "))
    expect(heading.locator("[data-status=succeeded]")).to_be_visible(timeout=RUN_MS)
    snapshot(page, "job-fan-out")

    previous = items.get_by_role("button", name="Previous items")
    following = items.get_by_role("button", name="Next items")
    expect(previous).to_be_disabled()
    following.click()
    expect(range_).to_have_text("Items 51\N{EN DASH}100 of 120")
    expect(succeeded).to_have_count(50)
    assert shown_items(items) == list(range(50, 100))
    following.click()
    expect(range_).to_have_text("Items 101\N{EN DASH}120 of 120")
    expect(succeeded).to_have_count(20)
    assert shown_items(items) == list(range(100, 120))
    expect(following).to_be_disabled()
    previous.click()
    expect(range_).to_have_text("Items 51\N{EN DASH}100 of 120")
    assert shown_items(items) == list(range(50, 100))
