"""Projects in the browser: create, rename and delete; deep links load their page."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import snapshot

pytestmark = pytest.mark.browser


def test_projects_are_created_renamed_and_deleted(page: Page, api: httpx.Client) -> None:
    name = f"ui_{uuid.uuid4().hex[:8]}"
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.get_by_role("heading", name="Projects", exact=True)).to_be_visible()

    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description").fill("made in the browser")
    page.get_by_role("button", name="Create project").click()
    row = page.locator("[data-testid=projects] tr", has_text=name)
    expect(row).to_be_visible()
    assert any(p["name"] == name for p in api.get("/projects").json())
    snapshot(page, "projects")

    # a name the API refuses: its problem details are shown, nothing is created
    page.get_by_label("Name", exact=True).fill("1 bad name")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("alert")).to_contain_text("name")

    row.get_by_role("button", name=f"Rename {name}").click()
    page.get_by_label(f"New name of {name}").fill(f"{name}_renamed")
    page.get_by_role("button", name="Save").click()
    renamed = page.locator("[data-testid=projects] tr", has_text=f"{name}_renamed")
    expect(renamed).to_be_visible()

    # the project's own page is a deep link
    project_id = next(
        p["id"] for p in api.get("/projects").json() if p["name"] == f"{name}_renamed"
    )
    page.goto(f"/ui/projects/{project_id}")
    expect(page.get_by_role("heading", name=f"Project {name}_renamed")).to_be_visible()
    expect(page.get_by_text("No workflows in this project yet.")).to_be_visible()
    snapshot(page, "project")

    page.goto("/ui/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Delete {name}_renamed").click()
    expect(renamed).to_have_count(0)
    assert not any(p["id"] == project_id for p in api.get("/projects").json())
