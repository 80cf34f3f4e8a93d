"""Reading label configs: every control we fill, each subset, label-studio-ml-backend's conventions
(model_skip, predicted_values, several controls of a kind, toName naming several objects), and configs we
must refuse."""
from pathlib import Path

import pytest

from backend.service.label_config import LabelConfigError, parse_label_config
from backend.vision.detections import BODY_KEYPOINT_NAMES

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
    assert keypoints.face_points == {0: "left_eye", 1: "right_eye", 2: "nose", 3: "mouth_left", 4: "mouth_right"}
    assert keypoints.body_points == {}
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
    assert keypoints.keypoints[0].face_points == {0: "Left Eye", 1: "right-eye", 2: "nose"}
    assert keypoints.wants_faces and not keypoints.boxes

    choices = parse_label_config(CHOICES_IDENTITY)
    assert choices.identities[0].kind == "choices"
    assert choices.identities[0].choices == {"person_1": "person_1", "Alice": "Alice"}


def test_face_labels_are_configurable():
    spec = parse_label_config(FACES_ONLY.replace("FACE", "Head"), face_labels=("head",))
    assert spec.boxes[0].face_label == "Head"


def test_the_shipped_config_has_smart_tools():
    """Interactive pre-annotation needs smart="true" on the tools that send what the annotator draws."""
    assert 'smart="true"' in SHIPPED.split("<RectangleLabels", 1)[1].split(">", 1)[0]
    assert 'smart="true"' in SHIPPED.split("<KeyPointLabels", 1)[1].split(">", 1)[0]


def test_model_skip_leaves_a_control_alone():
    config = SHIPPED.replace('<KeyPointLabels name="landmarks"', '<KeyPointLabels model_skip="true" name="landmarks"')
    spec = parse_label_config(config)
    assert spec.keypoints == [] and [c.name for c in spec.boxes] == ["boxes"]
    assert parse_label_config(config.replace('model_skip="true"', 'model_skip="false"')).keypoints


def test_predicted_values_say_what_a_label_stands_for():
    spec = parse_label_config("""<View><Image name="img" value="$photo"/>
        <RectangleLabels name="boxes" toName="img">
          <Label value="Face" predicted_values="person"/><Label value="Head" predicted_values="face,skull"/>
          <Label value="Car" predicted_values="vehicle"/>
        </RectangleLabels>
        <Choices name="who" toName="img" perRegion="true">
          <Choice value="Alice" predicted_values="person_3, person_9"/><Choice value="person_1"/>
        </Choices></View>""")
    [boxes] = spec.boxes
    # "Face" stands for what its predicted_values name (a person); "Car" names nothing we know, and is no face.
    assert (boxes.face_label, boxes.person_label) == ("Head", "Face")
    assert spec.identities[0].choices == {"person_3": "Alice", "person_9": "Alice", "Alice": "Alice",
                                          "person_1": "person_1"}


BODY_JOINTS = "".join(f'<Label value="{name}"/>' for name in BODY_KEYPOINT_NAMES)


def test_body_joints_and_face_landmarks():
    spec = parse_label_config(f"""<View><Image name="img" value="$photo"/>
        <KeyPointLabels name="pose" toName="img">{BODY_JOINTS}</KeyPointLabels>
        <KeyPointLabels name="face" toName="img"><Label value="nose"/><Label value="mouth_left"/></KeyPointLabels>
        </View>""")
    pose, face = spec.keypoints
    # The pose control has joints only bodies have: its nose and eyes are the body's.
    assert pose.face_points == {} and pose.body_points == dict(enumerate(BODY_KEYPOINT_NAMES))
    assert face.face_points == {2: "nose", 3: "mouth_left"} and face.body_points == {}
    assert spec.wants_persons and spec.wants_faces


def test_keypoint_owner_from_predicted_values():
    """label-studio-ml-backend's YOLO pose configs name the object in predicted_values, the joint in value."""
    spec = parse_label_config("""<View><Image name="img" value="$photo"/>
        <KeyPointLabels name="kp" toName="img">
          <Label value="nose" predicted_values="person"/><Label value="Left eye" predicted_values="person"/>
          <Label value="Nose tip" predicted_values="face,nose"/><Label value="chin"/>
        </KeyPointLabels></View>""")
    [kp] = spec.keypoints
    assert kp.body_points == {0: "nose", 1: "Left eye"} and kp.face_points == {2: "Nose tip"}


def test_every_control_of_a_kind_and_several_objects_in_to_name():
    spec = parse_label_config("""<View>
        <Text name="caption" value="$caption"/><Image name="left" value="$left"/><Image name="right" value="$right"/>
        <RectangleLabels name="faces" toName="caption,right"><Label value="Face"/></RectangleLabels>
        <RectangleLabels name="heads" toName="right"><Label value="face"/><Label value="Person"/></RectangleLabels>
        <TextArea name="id" toName="right" perRegion="true"/>
        <Choices name="known" toName="right" perRegion="true"><Choice value="Alice"/></Choices>
        </View>""")
    # Only the right image has controls to fill; the one that names the text and the image is found.
    assert (spec.image_name, spec.image_key) == ("right", "right")
    assert [(c.name, c.face_label, c.person_label) for c in spec.boxes] == [
        ("faces", "Face", None), ("heads", "face", "Person")]
    assert [c.name for c in spec.face_boxes] == ["faces", "heads"] and [c.name for c in spec.person_boxes] == ["heads"]
    assert [(c.name, c.kind) for c in spec.identities] == [("id", "textarea"), ("known", "choices")]


def test_the_first_image_with_controls_is_annotated():
    spec = parse_label_config("""<View><Image name="a" value="$a"/><Image name="b" value="$b"/>
        <RectangleLabels name="on_b" toName="b"><Label value="Face"/></RectangleLabels>
        <RectangleLabels name="on_a" toName="a"><Label value="Person"/></RectangleLabels></View>""")
    assert spec.image_name == "a" and [c.name for c in spec.boxes] == ["on_a"]


def test_without_thresholds():
    spec = parse_label_config(SHIPPED).without_thresholds()
    assert spec.boxes[0].score_threshold is None and spec.keypoints[0].score_threshold is None


@pytest.mark.parametrize("config, message", [
    (NOTHING, "no control this backend can fill"),
    ("", "no label config"),
    ("<View><Image", "not valid XML"),
    ("<View><RectangleLabels name='f' toName='x'><Label value='Face'/></RectangleLabels></View>", "no <Image"),
    ("""<View><Image name="img" value="$photo"/>
        <TextArea name="id" toName="img" perRegion="true"/></View>""", "needs a RectangleLabels"),
    ("""<View><Image name="img" value="$photo"/><RectangleLabels name="f" toName="img"
        model_score_threshold="high"><Label value="Face"/></RectangleLabels></View>""", "must be a number"),
    ("""<View><Image name="img" value="$photo"/>
        <RectangleLabels name="f" toName="img" model_skip="yes"><Label value="Face"/></RectangleLabels></View>""",
     "no control this backend can fill"),
])
def test_unusable_configs_are_refused_with_a_reason(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)
