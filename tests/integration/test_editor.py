"""Label Studio's own editor, in headless Chromium driven by Playwright, against a real Label Studio and this
backend: a pre-annotated task as annotators see it, and interactive pre-annotation (a box drawn around a face
with Auto-Annotation on comes back with the face's landmarks and identity, then reaches the face store when
the annotation is submitted).

Chromium is the system's (`apt-get install -y chromium`: /usr/bin/chromium); Playwright downloads no browser.
The screenshots go to pytest's temporary directory; with UPDATE_SCREENSHOTS=1 they also replace
docs/label-studio-task.png and docs/auto-annotation.png, which the README shows.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .label_studio import REPO_ROOT
from .test_label_studio import LABEL_CONFIG, photo_of

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1600, "height": 1000}
DOCS = REPO_ROOT / "docs"
LOOSE = 1.25  # a hand-drawn box around a face is looser than the face
# The editor's main image: the largest image on the page that has loaded (the data manager shows thumbnails).
EDITOR_IMAGE = """() => {
    const images = [...document.images].filter(i => i.complete && i.naturalWidth > 0);
    const area = i => i.getBoundingClientRect().width * i.getBoundingClientRect().height;
    const image = images.sort((a, b) => area(b) - area(a))[0];
    if (!image || area(image) < 100 * 100) return null;
    const r = image.getBoundingClientRect();
    return {x: r.x, y: r.y, width: r.width, height: r.height, naturalWidth: image.naturalWidth,
            naturalHeight: image.naturalHeight};
}"""
# The annotation open in the editor, as the editor would submit it.
ANNOTATION = "() => window.Htx.annotationStore.selected.serializeAnnotation()"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, label_studio):
    """A tab logged in as the harness's user (the cookies of its login), with a fresh local storage: the
    editor's toggles start off."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_cookies([{"name": c.name, "value": c.value, "url": label_studio.url}
                         for c in label_studio.browser.cookies])
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def new_project(label_studio, backend, photos, title: str, names: list[str], interactive: bool) -> tuple[int, dict]:
    """A project of these photos with the shipped config and this backend connected; (id, photo -> task id)."""
    project = label_studio.create_project(title, LABEL_CONFIG.read_text())
    label_studio.upload_files(project, [photos / name for name in names])
    tasks = {photo_of(t): t["id"] for t in label_studio.tasks(project)}
    ml_backend = label_studio.connect_ml_backend(project, backend.url, "autoannotator", backend.auth)
    if interactive:
        # Connect Model's "Interactive preannotations" switch. Label Studio's edit form sends the whole form.
        label_studio.api("PATCH", f"/api/ml/{ml_backend['id']}", json={
            "project": project, "url": backend.url, "title": "autoannotator", "is_interactive": True,
            "auth_method": "BASIC_AUTH", "basic_auth_user": backend.auth[0], "basic_auth_pass": backend.auth[1]})
    return project, tasks


def retrieve_predictions(label_studio, project: int, task_ids: list[int]) -> None:
    """Data manager: tick these tasks, Actions > Retrieve Predictions."""
    tab = label_studio.open_data_manager(project)
    label_studio.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&tabID={tab}&project={project}", json={
        "ordering": [], "selectedItems": {"all": False, "included": task_ids},
        "filters": {"conjunction": "and", "items": []}, "project": str(project)}, timeout=600)


def open_task(page, label_studio, project: int, task: int) -> dict:
    """The task in the data manager's editor; returns where its image is on the screen."""
    tab = label_studio.open_data_manager(project)
    page.goto(f"{label_studio.url}/projects/{project}/data?tab={tab}&task={task}")
    page.wait_for_function(EDITOR_IMAGE)
    page.wait_for_timeout(2000)  # the editor draws its regions over the image
    return page.evaluate(EDITOR_IMAGE)


def on_screen(image: dict, x: float, y: float) -> tuple[float, float]:
    return (image["x"] + x * image["width"] / image["naturalWidth"],
            image["y"] + y * image["height"] / image["naturalHeight"])


def save_screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS / name)


def select_face(page, index: int) -> None:
    """Click a face in the region list: the editor shows its identity in the region's details (and handles
    to resize its box, over the face)."""
    page.locator(".lsf-outliner-item", has=page.locator(".lsf-labels-list", has_text="Face")).nth(index).click()
    page.wait_for_timeout(500)


def test_a_pre_annotated_task(page, label_studio, backend, photos, tmp_path):
    project, tasks = new_project(label_studio, backend, photos, "Pre-annotated", ["street_bus.jpg"], False)
    retrieve_predictions(label_studio, project, list(tasks.values()))
    open_task(page, label_studio, project, tasks["street_bus.jpg"])
    result = page.evaluate(ANNOTATION)  # "Use predictions to prelabel tasks" is on by default
    faces = [r for r in result if r["type"] == "rectanglelabels" and r["value"]["rectanglelabels"] == ["Face"]]
    assert len(faces) == 2, result
    for face in faces:
        points = [r for r in result if r["type"] == "keypointlabels" and r.get("parentID") == face["id"]]
        assert len(points) == 5
        # The smallest Label Studio draws (see README, Landmarks): the face shows between its points.
        assert all(p["value"]["width"] <= 0.5 for p in points)
    select_face(page, 1)  # the other face shows its landmarks unhidden by the handles
    identity = next(r["value"]["text"][0] for r in result if r["type"] == "textarea" and r["id"] == faces[1]["id"])
    expect(page.get_by_text(identity, exact=True).first).to_be_visible()
    save_screenshot(page, tmp_path, "label-studio-task.png")


def test_a_box_drawn_on_a_face_brings_its_landmarks_and_identity(page, label_studio, backend, photos, faces_truth,
                                                                tmp_path):
    project, tasks = new_project(label_studio, backend, photos, "Interactive",
                                 ["obama_1.jpg", "obama_3.jpg"], True)
    # The project knows Obama from one photo; the other opens without predictions, as a task whose face the
    # models missed would.
    retrieve_predictions(label_studio, project, [tasks["obama_1.jpg"]])
    [known] = label_studio.predictions(project)[tasks["obama_1.jpg"]]
    [obama] = [r["value"]["text"][0] for r in known["result"] if r["type"] == "textarea"]
    label_studio.api("PATCH", f"/api/projects/{project}", json={"show_collab_predictions": False})
    image = open_task(page, label_studio, project, tasks["obama_3.jpg"])
    assert page.evaluate(ANNOTATION) == []

    # Below the image: Auto-Annotation, then Auto-Accept Suggestions (which appears with it).
    page.get_by_test_id("bottombar-auto-annotation-toggle").check()
    page.get_by_test_id("bottombar-auto-accept-toggle").check()
    page.locator(".lsf-label", has_text="Face").first.click()  # the label to draw with
    page.locator(".lsf-tool_smart", has_text="Auto-Detect").click()  # the smart tools: the rectangle first

    x1, y1, x2, y2 = faces_truth["obama_3.jpg"]["faces"][0]["box"]
    grow_x, grow_y = (x2 - x1) * (LOOSE - 1) / 2, (y2 - y1) * (LOOSE - 1) / 2
    with page.expect_response(lambda r: "/interactive-annotating" in r.url) as answered:
        page.mouse.move(*on_screen(image, x1 - grow_x, y1 - grow_y))
        page.mouse.down()
        page.mouse.move(*on_screen(image, x2 + grow_x, y2 + grow_y), steps=10)
        drawn_at = time.monotonic()
        page.mouse.up()
    answer = answered.value.json()
    assert answered.value.status == 200 and "errors" not in answer, answer
    page.wait_for_function(f"() => ({ANNOTATION})().some(r => r.type === 'textarea')")
    waited = time.monotonic() - drawn_at

    result = page.evaluate(ANNOTATION)
    [face] = [r for r in result if r["type"] == "rectanglelabels"]
    assert face["value"]["rectanglelabels"] == ["Face"]
    # The drawn box was replaced by the face the models found: tighter than the loose box drawn.
    drawn_width = (x2 - x1) * LOOSE / image["naturalWidth"] * 100
    assert face["value"]["width"] < drawn_width
    points = [r for r in result if r["type"] == "keypointlabels"]
    assert sorted(p["value"]["keypointlabels"][0] for p in points) == sorted(
        ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"])
    assert all(p["parentID"] == face["id"] for p in points)
    [identity] = [r for r in result if r["type"] == "textarea"]
    assert identity["id"] == face["id"] and identity["value"]["text"] == [obama]

    select_face(page, 0)
    expect(page.get_by_text(obama, exact=True).first).to_be_visible()
    folded = page.locator(".lsf-tree-switcher_close")
    if folded.count():  # unfold the face's landmarks in the region list, for the screenshot
        folded.first.click()
        page.wait_for_timeout(500)
    save_screenshot(page, tmp_path, "auto-annotation.png")
    print(f"answer shown {waited:.2f} s after the mouse was released")

    # Submitted, the annotation keeps them, and the webhook tells the face store who this face is.
    page.get_by_test_id("bottombar-submit-button").click()
    deadline = time.monotonic() + 60
    while not (annotations := label_studio.api("GET", f"/api/tasks/{tasks['obama_3.jpg']}/annotations/").json()):
        assert time.monotonic() < deadline, "the annotation was not submitted"
        time.sleep(0.5)
    [submitted] = annotations
    assert {r["type"] for r in submitted["result"]} == {"rectanglelabels", "keypointlabels", "textarea"}
    store = backend_store(backend)
    deadline = time.monotonic() + 60
    while (str(tasks["obama_3.jpg"]), face["id"]) not in store.shown_ids(str(project)):
        assert time.monotonic() < deadline, f"the face store never learned the drawn face:\n{backend.log()[-3000:]}"
        time.sleep(0.5)
    assert store.shown_ids(str(project))[(str(tasks["obama_3.jpg"]), face["id"])] == obama


def backend_store(backend):
    """The backend's face store (start_backend puts DATA_DIR beside its log)."""
    from backend.storage import FaceStore

    return FaceStore.open("", backend.log_path.parent / "data")
