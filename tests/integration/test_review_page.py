"""The identity review page in a real browser (Debian's headless Chromium, driven by Playwright), against a
real Label Studio and this backend: merge two identities on the page and see their tasks' predictions in
Label Studio carry one id, then undo on the page and see them back, with the annotation a person made
untouched throughout.

REVIEW_SCREENSHOT=docs/review-page.png also saves the page, as the README shows it, after the merge.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from .label_studio import REPO_ROOT
from .test_label_studio import photo_of

CHROMIUM = "/usr/bin/chromium"  # Debian's package (tests/run.sh installs it): Playwright downloads no browser
LABEL_CONFIG = REPO_ROOT / "label_config.xml"
PHOTOS = ["obama_1.jpg", "obama_2.jpg", "biden.jpg", "grace_hopper.jpg", "astronaut_eileen_collins.jpg", "street_bus.jpg"]
MERGED = ("biden.jpg", "grace_hopper.jpg")  # one face each, of two people
PAGE_TIMEOUT_MS = 120_000  # an operation rewrites predictions in Label Studio before the page reloads


@pytest.fixture(scope="module")
def project(label_studio, backend, photos) -> tuple[int, dict[str, int]]:
    project_id = label_studio.create_project("Identity review", LABEL_CONFIG.read_text())
    label_studio.upload_files(project_id, [photos / name for name in PHOTOS])
    tasks = {photo_of(task): task["id"] for task in label_studio.tasks(project_id)}
    assert set(tasks) == set(PHOTOS)
    label_studio.connect_ml_backend(project_id, backend.url, "autoannotator", backend.auth)
    label_studio.retrieve_predictions(project_id)
    return project_id, tasks


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run.sh does)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def identities_in_label_studio(label_studio, project_id: int, tasks: dict[str, int]) -> dict[str, list[str]]:
    """photo -> the identity of each face in the newest of the backend's predictions of its task."""
    predictions = label_studio.predictions(project_id)
    found = {}
    for photo in MERGED:
        newest = max(predictions[tasks[photo]], key=lambda prediction: prediction["id"])
        found[photo] = [r["value"]["text"][0] for r in newest["result"] if r["type"] == "textarea"]
    return found


def test_merge_on_the_page_updates_label_studio_and_undo_takes_it_back(label_studio, backend, project, browser):
    project_id, tasks = project
    before = identities_in_label_studio(label_studio, project_id, tasks)
    assert all(len(ids) == 1 for ids in before.values()) and before[MERGED[0]] != before[MERGED[1]], before
    # A person's annotation of one of the tasks: the page must not touch it.
    prediction = max(label_studio.predictions(project_id)[tasks[MERGED[1]]], key=lambda p: p["id"])
    result = [{key: value for key, value in region.items() if key != "score"} for region in prediction["result"]]
    annotation = label_studio.api("POST", f"/api/tasks/{tasks[MERGED[1]]}/annotations/?project={project_id}",
                                  json={"result": result, "project": project_id}).json()
    annotated = copy.deepcopy(label_studio.api("GET", f"/api/annotations/{annotation['id']}/").json()["result"])

    context = browser.new_context(http_credentials={"username": backend.auth[0], "password": backend.auth[1]},
                                  viewport={"width": 1360, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    assert page.goto(f"{backend.url}/identities?project={project_id}").status == 200
    rows = {photo: page.locator(f'section.identity[data-display="{before[photo][0]}"]') for photo in MERGED}
    for photo, row in rows.items():
        expect(row.locator("img")).to_have_count(1)  # its thumbnail, loaded
        row.locator(".pick-identity").check()
    expect(page.locator("#selection")).to_have_text("2 identities selected")
    with page.expect_navigation():
        page.get_by_role("button", name="Merge identities").click()
    expect(page.locator("#status")).to_contain_text("merged")
    expect(page.locator("#status")).to_contain_text("Label Studio: 1 prediction updated")

    merged = identities_in_label_studio(label_studio, project_id, tasks)
    assert merged[MERGED[0]] == merged[MERGED[1]] and merged[MERGED[0]][0] in {ids[0] for ids in before.values()}
    page.evaluate("window.scrollTo(0, 0)")
    if os.environ.get("REVIEW_SCREENSHOT"):
        page.screenshot(path=os.environ["REVIEW_SCREENSHOT"], full_page=True)

    with page.expect_navigation():
        page.locator(".history .undo").first.click()
    expect(page.locator("#status")).to_contain_text("undid: merged")
    assert identities_in_label_studio(label_studio, project_id, tasks) == before
    assert label_studio.api("GET", f"/api/annotations/{annotation['id']}/").json()["result"] == annotated
    context.close()

    # An operation on one task (up to REVIEW_PUSH_INLINE_TASKS) answers once Label Studio is updated.
    form = {"project": project_id, "task": tasks[MERGED[0]], "region": "face1", "to": "new"}
    moved = requests.post(f"{backend.url}/identities/move", data=form, auth=backend.auth, timeout=120,
                          headers={"X-Requested-With": "autoannotator-review"})
    assert moved.status_code == 200 and moved.json()["label_studio"] == "1 prediction updated", moved.text
    assert identities_in_label_studio(label_studio, project_id, tasks)[MERGED[0]] != before[MERGED[0]]
