"""The whole path in the browser: edit a workflow, publish, run, watch it live, rerun.

- A project and a workflow with a condition and a fan-out are made in the
  editor; a bad CEL condition is shown on its field, both by the live check
  and by a refused publish; the fixed draft publishes.
- A run started from the UI goes from running to succeeded in the grid and
  in the job's graph without a reload (the page's state survives); the job
  page shows each process's input and a fan-out's items.
- A run that failed at a gated step is rerun from the job page once the gate
  is open: the step before it is reused and the new run succeeds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import httpx
import psycopg
import pytest
from playwright.sync_api import Locator, Page, expect

from autostep.settings import libpq_dsn
from tests.browser.conftest import snapshot

pytestmark = pytest.mark.browser

#: Milliseconds a run may take to reach a state in the page.
RUN_MS = 45_000


def field(page: Page, path: str) -> Locator:
    """The input of the editor named by its path in the definition."""
    return page.locator(f'[data-field="{path}"]')


def add_step(page: Page, index: int, name: str, function: str) -> None:
    page.get_by_role("button", name="Add step").click()
    field(page, f"steps[{index}].name").fill(name)
    field(page, f"steps[{index}].function").select_option(function)


def add_transition(page: Page, step: str, index: int, path: str, to: str, when: str = "") -> None:
    page.get_by_role("button", name=f"Add a transition to {step}").click()
    field(page, f"{path}.next[{index}].to").select_option(to)
    if when:
        field(page, f"{path}.next[{index}].when").fill(when)


#: Records what a graph does not show: a node drawn hidden, a node React Flow
#: hides again, or an edge it removes while the graph stays (a new graph, drawn
#: when the steps or transitions change, replaces the whole figure). React Flow
#: hides what it has not measured, and the browser measures only when it
#: renders a frame, which a busy or background tab may not do for seconds.
WATCH_GRAPH = """() => {
  if (window.__vanished) return;
  window.__vanished = [];
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const node = m.target;
      if (m.type === "attributes" && node.classList.contains("react-flow__node")
          && node.style.visibility === "hidden")
        window.__vanished.push(`node ${node.dataset.id}`);
      for (const added of m.addedNodes) {
        if (!(added instanceof Element)) continue;
        for (const node of added.querySelectorAll(".react-flow__node"))
          if (node.style.visibility === "hidden")
            window.__vanished.push(`new node ${node.dataset.id}`);
      }
      for (const removed of m.removedNodes) {
        if (!(removed instanceof Element) || removed.querySelector(".react-flow__node")) continue;
        for (const edge of removed.querySelectorAll(".react-flow__edge"))
          window.__vanished.push(`edge ${edge.dataset.id}`);
      }
    }
  }).observe(document.body, {
    attributes: true, attributeFilter: ["style"], childList: true, subtree: true,
  });
}"""


def test_edit_publish_run_and_watch_live(page: Page, api: httpx.Client) -> None:
    project = f"flow_{uuid.uuid4().hex[:8]}"
    page.goto("/ui/")
    page.get_by_label("Name", exact=True).fill(project)
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("link", name=project).click()
    page.get_by_label("Name", exact=True).fill("orders")
    page.get_by_label("First step's function").select_option("noop")
    page.get_by_role("button", name="Create workflow").click()
    expect(page.get_by_role("heading", name="Workflow orders")).to_be_visible()
    workflow_id = page.url.rsplit("/", 1)[1]

    # seed --(output.n > 3)--> fan (delay for each item) --join--> total; otherwise --> small
    field(page, "sample").fill(
        '{"output": {"n": 5, "items": [1]}, "input": {}, "prev": {"items": [1]}}'
    )
    field(page, "steps[0].name").fill("seed")
    add_step(page, 1, "fan", "delay")
    field(page, "steps[1].config.seconds").fill("1")
    field(page, "steps[1].for_each").fill("output.items")  # `output` is not there at publish
    add_step(page, 2, "total", "noop")
    add_step(page, 3, "small", "noop")
    add_transition(page, "seed", 0, "steps[0]", "fan", "output.n >")
    add_transition(page, "seed", 1, "steps[0]", "small")
    add_transition(page, "fan", 0, "steps[1]", "total")
    graph = page.get_by_test_id("graph")
    expect(graph.get_by_text("output.n >", exact=True)).to_be_visible()
    page.evaluate(WATCH_GRAPH)

    # the live check shows the bad condition on its field
    when = "steps[0].next[0].when"
    expect(page.locator(f'[data-error-for="{when}"]')).to_contain_text("Syntax error")
    expect(field(page, when)).to_have_attribute("aria-invalid", "true")
    snapshot(page, "editor-error")
    field(page, when).fill("output.n > 3")
    expect(page.locator(f'[data-verdict-for="{when}"]')).to_contain_text("true")

    # a refused publish shows its error on the field that caused it
    for_each = "steps[1].for_each"
    expect(page.locator(f'[data-verdict-for="{for_each}"]')).to_be_visible()
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(f'[data-error-for="{for_each}"]')).to_contain_text("output")
    expect(field(page, for_each)).to_have_attribute("aria-invalid", "true")
    field(page, for_each).fill("prev.items")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Published version 2")
    expect(page.locator("[data-error-for]")).to_have_count(0)
    expect(graph.get_by_text("join: output.n > 3")).to_have_count(0)
    expect(graph.get_by_text("for each prev.items")).to_be_visible()
    expect(graph.get_by_text("join", exact=True)).to_be_visible()
    assert page.evaluate("window.__vanished") == []  # edits never hid what was drawn
    snapshot(page, "editor")

    # the grid, open before the run starts, follows it without a reload
    project_id = next(p["id"] for p in api.get("/projects").json() if p["name"] == project)
    grid = page.context.new_page()
    grid.goto(f"/ui/runs?project={project_id}")
    expect(grid.get_by_test_id("live")).to_have_text("live")
    expect(grid.get_by_text("No runs match these filters yet.")).to_be_visible()
    grid.evaluate("window.__kept = true")

    field(page, "input").fill('{"n": 5, "items": [{"k": 1}, {"k": 2}, {"k": 3}]}')
    page.get_by_role("button", name="Start run").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/"))
    job_id = page.url.rsplit("/", 1)[1]
    heading = page.get_by_role("heading", name=re.compile("^Run "))
    expect(heading.locator("[data-status=running]")).to_be_visible()
    fan_node = page.locator(".react-flow__node[data-id=fan]")
    expect(fan_node).to_have_class(re.compile("node-running"), timeout=RUN_MS)
    row = grid.locator(f'[data-testid=runs] tr[data-row-id="{job_id}"]')
    expect(row.locator("[data-status=running]")).to_be_visible()
    snapshot(grid, "runs")

    expect(heading.locator("[data-status=succeeded]")).to_be_visible(timeout=RUN_MS)
    assert page.evaluate("window.__vanished") == []  # nor did live statuses
    for step in ("seed", "fan", "total"):
        node = page.locator(f".react-flow__node[data-id={step}]")
        expect(node).to_have_class(re.compile("node-succeeded"))
    expect(page.locator(".react-flow__node[data-id=small]")).not_to_have_class(
        re.compile(r"\bnode-(queued|running|succeeded|failed|cancelled)\b")
    )
    expect(page.locator("[data-testid=processes] tr[data-step=fan]")).to_have_count(1)
    items = page.get_by_test_id("items-fan")
    expect(items.get_by_test_id("items-range")).to_have_text("Items 1\N{EN DASH}3 of 3")
    expect(items.locator("tbody tr[data-step=fan] [data-status=succeeded]")).to_have_count(3)
    # each process shows the input its function was called with, folded
    items.locator("tr[data-item='1']").get_by_text("input", exact=True).click()
    expect(page.get_by_label("input of fan [1]")).to_contain_text('"k": 2')
    page.locator("[data-testid=processes] tr[data-step=seed]").get_by_text(
        "input", exact=True
    ).click()
    expect(page.get_by_label("input of seed")).to_contain_text('"n": 5')
    snapshot(page, "job")
    expect(row.locator("[data-status=succeeded]")).to_be_visible(timeout=RUN_MS)
    assert grid.evaluate("window.__kept") is True  # no reload happened
    # the grid filters by status
    grid.get_by_label("Status").select_option("failed")
    expect(row).to_have_count(0)
    grid.get_by_label("Status").select_option("succeeded")
    expect(row).to_be_visible()
    assert api.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    assert workflow_id


def test_a_failed_run_is_rerun_from_its_failed_step(
    page: Page, api: httpx.Client, platform_env: dict[str, str]
) -> None:
    gate = f"g_{uuid.uuid4().hex[:8]}"
    project = api.post("/projects", json={"name": f"rerun_{uuid.uuid4().hex[:8]}"}).json()
    definition = {
        "name": "gated",
        "steps": [
            {"name": "first", "function": "t_add", "next": [{"to": "gated"}]},
            {"name": "gated", "function": "t_gated", "config": {"gate": gate}},
        ],
    }
    created = api.post(f"/projects/{project['id']}/workflows", json=definition)
    assert created.status_code == 201, created.text
    job = api.post(f"/workflows/{created.json()['workflow']['id']}/jobs", json={"input": {}}).json()

    page.goto(f"/ui/jobs/{job['id']}")
    heading = page.get_by_role("heading", name=re.compile("^Run "))
    expect(heading.locator("[data-status=failed]")).to_be_visible(timeout=RUN_MS)
    expect(page.locator(".react-flow__node[data-id=gated]")).to_have_class(
        re.compile("node-failed")
    )
    expect(page.locator("tr[data-step=gated]")).to_contain_text(f"gate {gate} is closed")
    expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()
    snapshot(page, "job-failed")

    open_gate(platform_env)(gate)
    page.get_by_role("button", name="Rerun from failed step").click()
    expect(page).not_to_have_url(re.compile(job["id"]))
    expect(heading.locator("[data-status=succeeded]")).to_be_visible(timeout=RUN_MS)
    expect(page.locator("tr[data-step=first]")).to_contain_text("(reused)")
    expect(page.get_by_role("link", name=job["id"][:8])).to_be_visible()  # rerun of
    rerun = api.get(f"/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert rerun["rerun_of"] == job["id"]
    assert rerun["status"] == "succeeded"


def open_gate(platform_env: dict[str, str]) -> Callable[[str], None]:
    def opener(name: str) -> None:
        dsn = libpq_dsn(platform_env["AUTOSTEP_DATABASE_URL"])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO test_gate (name) VALUES (%s)", (name,))

    return opener
