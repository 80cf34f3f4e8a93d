"""A property-based fuzz of every route the backend serves: whatever a client sends, the answer is never a
5xx and never carries a traceback.

The routes are read from the app's own URL map, so that a route added later is fuzzed too. Bodies are
random JSON and near-valid variants of what Label Studio sends. In-process (Flask's test client), with
authentication on, bounded by a fixed number of examples per route; nothing leaves the machine (image
values are local paths and Label Studio paths on a Label Studio at an unused loopback port).
"""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import PHOTOS
from tests.test_label_config import SHIPPED

# user:pass, and the header the review page's operations need against cross-site requests
HEADERS = {"Authorization": "Basic dXNlcjpwYXNz", "X-Requested-With": "autoannotator-review"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
images = st.sampled_from([str(PHOTOS / "biden.jpg"), "/data/upload/1/a.jpg", "/data/local-files/?d=a.jpg",
                          "/etc/passwd", "", "file:///dev/zero"]) | json_values
tasks = st.lists(st.fixed_dictionaries({"id": st.integers(-2, 2**40) | json_values,
                                        "data": st.fixed_dictionaries({"image": images}) | json_values}), max_size=3)
configs = st.sampled_from([SHIPPED, "<View/>", "<View><Image name='i' value='$image'/></View>", "<"]) | json_values
regions = st.fixed_dictionaries({
    "id": st.sampled_from(["face1", "x"]) | json_values,
    "type": st.sampled_from(["rectanglelabels", "textarea", "choices", "keypointlabels"]) | json_values,
    "value": st.fixed_dictionaries({"x": json_values, "y": json_values, "width": json_values,
                                    "height": json_values, "rectanglelabels": st.just(["Face"]) | json_values,
                                    "text": st.lists(st.text(max_size=10), max_size=2) | json_values}),
    "original_width": json_values, "original_height": json_values,
})
actions = st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED",
                           "PROJECT_DELETED", "START_TRAINING", "PROJECT_UPDATED"]) | json_values
projects = st.sampled_from(["1.1", 1, "2", "x", None]) | json_values
bodies = json_values | st.fixed_dictionaries({
    "tasks": tasks | json_values, "label_config": configs, "schema": configs, "project": projects,
    "action": actions, "task": st.fixed_dictionaries({"id": json_values, "data": json_values}) | json_values,
    "annotation": st.fixed_dictionaries({"id": json_values, "result": st.lists(regions, max_size=3)}) | json_values,
    "annotations": st.lists(st.fixed_dictionaries({"id": json_values}), max_size=2) | json_values,
    "params": json_values,
})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from backend.config import Settings
    from backend.service.app import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), local_files_root=PHOTOS,
                        basic_auth_user="user", basic_auth_pass="pass",
                        label_studio_url="http://127.0.0.1:9", fetch_timeout=2.0)
    return create_app(settings)


def routes(app) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "1", rule.rule)  # every variable part: a value that could exist
        found += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return found


def test_the_fuzz_reaches_every_route(app):
    assert {("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"), ("POST", "/recluster"),
            ("GET", "/health")} <= set(routes(app))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, raw=st.booleans(), junk=st.binary(max_size=40), query=st.dictionaries(
    st.sampled_from(["project", "page", "identity", "q"]), st.text(max_size=8), max_size=3))
def test_no_route_answers_5xx(app, body, raw, junk, query):
    client = app.test_client()
    for method, path in routes(app):
        data = junk if raw else json.dumps(body)
        response = client.open(path, method=method, data=data, query_string=query, headers=HEADERS,
                               content_type="application/json")
        assert response.status_code < 500, (method, path, body, response.get_data(as_text=True)[:500])
        assert b"Traceback" not in response.get_data()
