"""Read a Label Studio label config and decide which of its controls this backend fills.

One class per kind of control we understand (as in label-studio-ml-backend's control models): boxes
(RectangleLabels), points (KeyPointLabels: the five face landmarks and the 17 COCO body joints) and
per-region identities (TextArea or Choices). Every control of a kind is filled, not only the first.

What a user may put on the tags in Label Studio's config editor, with label-studio-ml-backend's meanings:
- `model_score_threshold="0.5"` on RectangleLabels or KeyPointLabels: send only regions scoring that much;
- `model_skip="true"` on a control: the backend leaves that control alone;
- `predicted_values="face"` on a Label (or `predicted_values="person_3"` on an identity Choice): the names of
  what the backend predicts that this label stands for, comma-separated; a label without any name the backend
  knows among them stands for its own `value` (`<Label value="Head" predicted_values="face"/>` is a face box);
- `toName="a,b"`: a control may name several objects; it is filled for the Image among them.
Label values compare case-, space- and dash-insensitively (normalise_label).

A config with several Image tags is pre-annotated on one of them: the first that a control we fill names.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field, replace

from ..vision.detections import BODY_KEYPOINT_NAMES, LANDMARK_NAMES


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says why and what to change."""


def normalise_label(text: str) -> str:
    """Label values compare case-, space- and dash-insensitively: "Left Eye" is left_eye."""
    return text.strip().lower().replace(" ", "_").replace("-", "_")


# Joints only a body has: a KeyPointLabels control holding any of them is a body's, and its nose and eyes
# are the body's too (COCO's first five joints share their names with the face landmarks).
BODY_ONLY_NAMES = frozenset(BODY_KEYPOINT_NAMES) - frozenset(LANDMARK_NAMES)
TRUE_VALUES = ("1", "true", "yes")  # label-studio-ml-backend's reading of boolean attributes such as model_skip


@dataclass(frozen=True)
class BoxControl:
    name: str
    to_name: str
    face_label: str | None  # the Label value that means a face, if the control has one
    person_label: str | None
    score_threshold: float | None


@dataclass(frozen=True)
class KeypointControl:
    name: str
    to_name: str
    face_points: dict[int, str]  # index in LANDMARK_NAMES -> Label value
    body_points: dict[int, str]  # index in BODY_KEYPOINT_NAMES -> Label value
    score_threshold: float | None


@dataclass(frozen=True)
class IdentityControl:
    name: str
    to_name: str
    kind: str  # "textarea" or "choices"
    choices: dict[str, str] = field(default_factory=dict)  # identity (id or name) -> the Choice value showing it


@dataclass(frozen=True)
class OutputSpec:
    """What to send for a project: the image field and each control to fill."""

    image_name: str  # the Image tag's name, which the controls point to
    image_key: str  # the task data key holding the image URL ($image -> "image")
    boxes: list[BoxControl] = field(default_factory=list)
    keypoints: list[KeypointControl] = field(default_factory=list)
    identities: list[IdentityControl] = field(default_factory=list)

    @property
    def face_boxes(self) -> list[BoxControl]:
        return [c for c in self.boxes if c.face_label]

    @property
    def person_boxes(self) -> list[BoxControl]:
        return [c for c in self.boxes if c.person_label]

    @property
    def wants_faces(self) -> bool:
        return bool(self.face_boxes) or any(c.face_points for c in self.keypoints) or bool(self.identities)

    @property
    def wants_persons(self) -> bool:
        return bool(self.person_boxes) or any(c.body_points for c in self.keypoints)

    def control(self, name: str):
        """The control of this name that the backend fills, or None."""
        return next((c for c in (*self.boxes, *self.keypoints, *self.identities) if c.name == name), None)

    def without_thresholds(self) -> "OutputSpec":
        """The same controls sending every region: for answers to a region an annotator asked about."""
        return replace(self, boxes=[replace(c, score_threshold=None) for c in self.boxes],
                       keypoints=[replace(c, score_threshold=None) for c in self.keypoints])


def parse_label_config(xml: str, face_labels=("face",), person_labels=("person",)) -> OutputSpec:
    if not xml or not xml.strip():
        raise LabelConfigError("the project has no label config")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise LabelConfigError(f"the label config is not valid XML: {error}") from None

    images = [tag for tag in root.iter() if tag.tag == "Image" and tag.get("name")]
    if not images:
        raise LabelConfigError('the label config has no <Image name="..." value="$..."/> tag to annotate')
    image_names = {tag.get("name"): tag for tag in images}
    face_labels = {normalise_label(v) for v in face_labels}
    person_labels = {normalise_label(v) for v in person_labels}

    boxes, keypoints, identities = [], [], []
    for tag in root.iter():
        targets = [name.strip() for name in tag.get("toName", "").split(",") if name.strip() in image_names]
        if not targets or not tag.get("name") or tag.get("model_skip", "").strip().lower() in TRUE_VALUES:
            continue
        labels = list(tag.iter("Label"))
        threshold = _threshold(tag)
        for to_name in targets:
            if tag.tag == "RectangleLabels":
                face = _label_for(labels, face_labels, face_labels | person_labels)
                person = _label_for(labels, person_labels, face_labels | person_labels)
                if face or person:
                    boxes.append(BoxControl(tag.get("name"), to_name, face, person, threshold))
            elif tag.tag == "KeyPointLabels":
                face_points, body_points = _points(labels, face_labels, person_labels)
                if face_points or body_points:
                    keypoints.append(KeypointControl(tag.get("name"), to_name, face_points, body_points, threshold))
            elif tag.tag in ("TextArea", "Choices") and tag.get("perRegion", "").lower() == "true":
                choices = {}
                for choice in tag.iter("Choice"):
                    value = choice.get("value", "")
                    for shown in (*_predicted_values(choice), value):
                        choices.setdefault(shown, value)
                identities.append(IdentityControl(tag.get("name"), to_name, tag.tag.lower(), choices))

    if not (boxes or keypoints or identities):
        raise LabelConfigError(
            "the label config has no control this backend can fill: add RectangleLabels with a "
            f"{'/'.join(sorted(face_labels))} or {'/'.join(sorted(person_labels))} label, KeyPointLabels with "
            f"labels {', '.join(LANDMARK_NAMES)} (or COCO's body joints), or a per-region TextArea/Choices for "
            "identities (see label_config.xml)"
        )
    # The image to pre-annotate: the first, in the config's order, that a control we fill names.
    named = {c.to_name for c in (*boxes, *keypoints, *identities)}
    image_name = next(name for name in image_names if name in named)
    on_image = lambda controls: [c for c in controls if c.to_name == image_name]  # noqa: E731
    boxes, keypoints, identities = on_image(boxes), on_image(keypoints), on_image(identities)
    if identities and not any(c.face_label for c in boxes):
        raise LabelConfigError(
            f"the per-region control {identities[0].name!r} needs a RectangleLabels control with a face label "
            "to attach identities to"
        )
    value = image_names[image_name].get("value", "")
    if not value.startswith("$"):
        raise LabelConfigError(f'the Image tag {image_name!r} needs value="$field", got {value!r}')
    return OutputSpec(image_name, value[1:], boxes, keypoints, identities)


def _predicted_values(tag) -> list[str]:
    return [value.strip() for value in tag.get("predicted_values", "").split(",") if value.strip()]


def _meanings(label, known: set[str]) -> set[str]:
    """What a Label stands for, by label-studio-ml-backend's rule: those of its predicted_values that name
    something the backend knows, else its own value (all normalised)."""
    predicted = {normalise_label(v) for v in _predicted_values(label)} & known
    return predicted or {normalise_label(label.get("value", ""))}


def _label_for(labels, wanted: set[str], known: set[str]) -> str | None:
    """The value of the first Label standing for one of the `wanted` names (among all `known` ones)."""
    return next((label.get("value", "") for label in labels if _meanings(label, known) & wanted), None)


def _points(labels, face_labels: set[str], person_labels: set[str]) -> tuple[dict[int, str], dict[int, str]]:
    """Which face landmark and which body joint each Label of a KeyPointLabels control is.

    A Label names its point by its predicted_values or its value; predicted_values may also say whose point it
    is (`<Label value="nose" predicted_values="person"/>`, label-studio-ml-backend's YOLO pose convention). A
    point whose owner is not said is a body's where the control holds a joint only bodies have, else a face's.
    """
    point_names = set(LANDMARK_NAMES) | set(BODY_KEYPOINT_NAMES)
    read = []  # (Label value, point name, owner or None)
    for label in labels:
        predicted = [normalise_label(v) for v in _predicted_values(label)]
        value = normalise_label(label.get("value", ""))
        point = next((n for n in (*predicted, value) if n in point_names), None)
        owner = ("person" if set(predicted) & person_labels else "face" if set(predicted) & face_labels else None)
        if point is not None:
            read.append((label.get("value", ""), point, owner))
    body_control = any(point in BODY_ONLY_NAMES for _, point, _ in read)
    face_points, body_points = {}, {}
    for value, point, owner in read:
        owner = owner or ("person" if body_control else "face")
        names, points = (BODY_KEYPOINT_NAMES, body_points) if owner == "person" else (LANDMARK_NAMES, face_points)
        if point in names:
            points.setdefault(names.index(point), value)
    return face_points, body_points


def _threshold(tag) -> float | None:
    raw = tag.get("model_score_threshold")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise LabelConfigError(f"{tag.get('name')}: model_score_threshold must be a number, got {raw!r}") from None
