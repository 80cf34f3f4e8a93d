"""Reading label configs: every control we fill, each subset, and configs we must refuse."""
from pathlib import Path

import pytest

from backend.service.label_config import LabelConfigError, parse_label_config

SHIPPED = (Path(__file__).resolve().parent.parent / "label_config.xml").read_text()

FACES_ONLY = """<View><Image name="img" value="$photo"/>
<RectangleLabels name="faces" toName="img"><Label value="FACE"/></RectangleLabels></View>"""
PERSONS_ONLY = """<View><Image name="img" value="$photo"/>
<RectangleLabels name="bodies" toName="img" model_score_threshold="0.6"><Label value="Pedestrian"/></RectangleLabels></View>"""
KEYPOINTS_ONLY = """<View><Image name="img" value="$photo"/>
<KeyPointLabels name="kp" toName="img"><Label value="Left Eye"/><Label value="right-eye"/><Label value="nose"/></KeyPointLabels></View>"""
CHOICES_IDENTITY = """<View><Image name="img" value="$photo"/>
<RectangleLabels name="faces" toName="img"><Label value="Face"/></RectangleLabels>
<Choices name="who" toName="img" perRegion="true"><Choice value="person_1"/><Choice value="Alice"/></Choices></View>"""
NOTHING = """<View><Image name="img" value="$photo"/>
<RectangleLabels name="cars" toName="img"><Label value="Car"/></RectangleLabels>
<Choices name="weather" toName="img"><Choice value="sunny"/></Choices></View>"""


def test_shipped_config_has_every_control():
    spec = parse_label_config(SHIPPED)
    assert (spec.image_name, spec.image_key) == ("image", "image")
    [boxes] = spec.boxes
    assert (boxes.face_label, boxes.person_label, boxes.score_threshold) == ("Face", "Person", 0.3)
    [keypoints] = spec.keypoints
    assert keypoints.labels == {0: "left_eye", 1: "right_eye", 2: "nose", 3: "mouth_left", 4: "mouth_right"}
    [identity] = spec.identities
    assert (identity.name, identity.kind) == ("identity", "textarea")
    assert spec.wants_faces and spec.wants_persons


def test_subsets():
    faces = parse_label_config(FACES_ONLY)
    assert faces.boxes[0].face_label == "FACE" and faces.boxes[0].person_label is None
    assert faces.image_key == "photo" and not faces.wants_persons

    persons = parse_label_config(PERSONS_ONLY, person_labels=("person", "pedestrian"))
    assert persons.boxes[0].person_label == "Pedestrian" and persons.boxes[0].score_threshold == 0.6
    assert not persons.wants_faces

    keypoints = parse_label_config(KEYPOINTS_ONLY)
    assert keypoints.keypoints[0].labels == {0: "Left Eye", 1: "right-eye", 2: "nose"}
    assert keypoints.wants_faces and not keypoints.boxes

    choices = parse_label_config(CHOICES_IDENTITY)
    assert choices.identities[0].kind == "choices" and choices.identities[0].choices == ("person_1", "Alice")


def test_face_labels_are_configurable():
    spec = parse_label_config(FACES_ONLY.replace("FACE", "Head"), face_labels=("head",))
    assert spec.boxes[0].face_label == "Head"


@pytest.mark.parametrize("config, message", [
    (NOTHING, "no control this backend can fill"),
    ("", "no label config"),
    ("<View><Image", "not valid XML"),
    ("<View><RectangleLabels name='f' toName='x'><Label value='Face'/></RectangleLabels></View>", "no <Image"),
    ("""<View><Image name="img" value="$photo"/>
        <TextArea name="id" toName="img" perRegion="true"/></View>""", "needs a RectangleLabels"),
    ("""<View><Image name="img" value="$photo"/><RectangleLabels name="f" toName="img"
        model_score_threshold="high"><Label value="Face"/></RectangleLabels></View>""", "must be a number"),
])
def test_unusable_configs_are_refused_with_a_reason(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)
