"""Read a Label Studio label config and decide which of its controls this backend fills.

One class per kind of control we understand (as in label-studio-ml-backend's control models):
boxes (RectangleLabels), landmarks (KeyPointLabels) and per-region identities (TextArea or Choices).
Settings a user may put on a control tag in Label Studio's config editor:
`model_score_threshold="0.5"` on RectangleLabels or KeyPointLabels.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from ..vision.detections import LANDMARK_NAMES


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says why and what to change."""


def normalise_label(text: str) -> str:
    """Label values compare case-, space- and dash-insensitively: "Left Eye" is left_eye."""
    return text.strip().lower().replace(" ", "_").replace("-", "_")


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
    labels: dict[int, str]  # landmark index -> Label value
    score_threshold: float | None


@dataclass(frozen=True)
class IdentityControl:
    name: str
    to_name: str
    kind: str  # "textarea" or "choices"
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSpec:
    """What to send for a project: the image field and each control to fill."""

    image_name: str  # the Image tag's name, which the controls point to
    image_key: str  # the task data key holding the image URL ($image -> "image")
    boxes: list[BoxControl] = field(default_factory=list)
    keypoints: list[KeypointControl] = field(default_factory=list)
    identities: list[IdentityControl] = field(default_factory=list)

    @property
    def wants_faces(self) -> bool:
        return any(c.face_label for c in self.boxes) or bool(self.keypoints) or bool(self.identities)

    @property
    def wants_persons(self) -> bool:
        return any(c.person_label for c in self.boxes)


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
    landmark_index = {name: i for i, name in enumerate(LANDMARK_NAMES)}

    boxes, keypoints, identities = [], [], []
    for tag in root.iter():
        to_name = tag.get("toName", "").split(",")[0]
        if to_name not in image_names or not tag.get("name"):
            continue
        labels = [label.get("value", "") for label in tag.iter("Label")]
        threshold = _threshold(tag)
        if tag.tag == "RectangleLabels":
            face = next((v for v in labels if normalise_label(v) in face_labels), None)
            person = next((v for v in labels if normalise_label(v) in person_labels), None)
            if face or person:
                boxes.append(BoxControl(tag.get("name"), to_name, face, person, threshold))
        elif tag.tag == "KeyPointLabels":
            found = {landmark_index[normalise_label(v)]: v for v in labels if normalise_label(v) in landmark_index}
            if found:
                keypoints.append(KeypointControl(tag.get("name"), to_name, found, threshold))
        elif tag.tag in ("TextArea", "Choices") and tag.get("perRegion", "").lower() == "true":
            choices = tuple(choice.get("value", "") for choice in tag.iter("Choice"))
            identities.append(IdentityControl(tag.get("name"), to_name, tag.tag.lower(), choices))

    if not (boxes or keypoints or identities):
        raise LabelConfigError(
            "the label config has no control this backend can fill: add RectangleLabels with a "
            f"{'/'.join(sorted(face_labels))} or {'/'.join(sorted(person_labels))} label, KeyPointLabels with "
            f"labels {', '.join(LANDMARK_NAMES)}, or a per-region TextArea/Choices for identities "
            "(see label_config.xml)"
        )
    face_boxes = [c for c in boxes if c.face_label]
    if identities and not face_boxes:
        raise LabelConfigError(
            f"the per-region control {identities[0].name!r} needs a RectangleLabels control with a face label "
            "to attach identities to"
        )
    image_name = (boxes or keypoints or identities)[0].to_name
    value = image_names[image_name].get("value", "")
    if not value.startswith("$"):
        raise LabelConfigError(f'the Image tag {image_name!r} needs value="$field", got {value!r}')
    return OutputSpec(image_name, value[1:], boxes, keypoints, identities)


def _threshold(tag) -> float | None:
    raw = tag.get("model_score_threshold")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise LabelConfigError(f"{tag.get('name')}: model_score_threshold must be a number, got {raw!r}") from None
