"""Run every configuration (each model alone, each preset's ensemble, with and without flip TTA) over the
ground-truth images and score it.

Each model is loaded once and shared by every configuration that uses it; within one image it also runs
once per orientation, since its boxes do not depend on which ensemble asked for them. So evaluating N
configurations costs about one pass of each model, not N passes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Settings
from ..vision.annotator import Annotator, ImageAnnotation
from ..vision.ensemble import DescriptorEnsemble, DetectorEnsemble
from ..vision.manifest import Manifest
from ..vision.models import load_model
from .ground_truth import ImageTruth
from .metrics import (MATCH_IOU, DetectionScores, IdentityScores, detection_scores, identity_scores,
                      landmark_errors, match_boxes)


@dataclass(frozen=True)
class Configuration:
    name: str
    face_models: tuple[str, ...]
    person_models: tuple[str, ...]
    descriptor_models: tuple[str, ...]
    flip_tta: bool
    preset: str | None = None  # the preset whose ensemble this is; None for one model alone


@dataclass
class Result:
    configuration: Configuration
    faces: DetectionScores | None  # None when the configuration has no model for this class
    persons: DetectionScores | None
    landmark_error: float  # mean over landmark_faces matched faces; NaN when there are none
    landmark_faces: int
    identity: IdentityScores | None
    annotations: list[ImageAnnotation]  # per image, every box whatever its score (for plots and the gallery)

    @property
    def fixes(self) -> int:
        boxes = sum(d.missing + d.false for d in (self.faces, self.persons) if d is not None)
        return boxes + (self.identity.merges + self.identity.splits if self.identity else 0)


def available(manifest: Manifest, settings: Settings, names) -> bool:
    """Whether every named model's weights are here (a preset needing a download cannot be evaluated)."""
    paths = [manifest[name].path(settings.models_dir) for name in names]
    return all(path is None or path.exists() for path in paths)


def configurations(manifest: Manifest, settings: Settings, presets: list[str], models: list[str],
                   flips: list[bool]) -> list[Configuration]:
    """Each model alone, then each preset's ensemble; every one with each flip setting in `flips`.

    A face model alone is scored with the shipped descriptors (DESCRIPTOR_MODELS or MODEL_PRESET's), so that
    its identity scores say what its boxes do to identities.
    """
    descriptors = settings.descriptor_models or tuple(manifest.presets[settings.model_preset].get("descriptor", []))
    found = []
    for name in models:
        task = manifest[name].task
        if task == "descriptor":
            raise ValueError(f"{name} is a descriptor model: --models takes face and person detectors")
        for flip in flips:
            found.append(Configuration(
                name=name + ("+flip" if flip else ""),
                face_models=(name,) if task == "face" else (),
                person_models=(name,) if task == "person" else (),
                descriptor_models=descriptors if task == "face" else (),
                flip_tta=flip,
            ))
    for preset in presets:
        chosen = {task: tuple(spec.name for spec in specs) for task, specs in manifest.preset(preset).items()}
        for flip in flips:
            found.append(Configuration(
                name=preset + ("+flip" if flip else ""),
                face_models=chosen["face"],
                person_models=chosen["person"],
                descriptor_models=chosen["descriptor"],
                flip_tta=flip,
                preset=preset,
            ))
    return found


class ReusedDetector:
    """A detector shared by several configurations: it runs once per image (and once per mirrored image)
    and hands the same boxes to every ensemble that asks. forget() drops them before the next image."""

    def __init__(self, detector):
        self.detector = detector
        self.spec = detector.spec
        self.name = detector.name
        self._outputs = {}

    def detect(self, image: np.ndarray):
        image = np.ascontiguousarray(image)
        key = (image.shape, hashlib.blake2b(image.data, digest_size=16).digest())
        if key not in self._outputs:
            self._outputs[key] = self.detector.detect(image)
        return self._outputs[key]

    def forget(self):
        self._outputs.clear()


def evaluate(pairs: list[tuple[ImageTruth, Path]], configs: list[Configuration], manifest: Manifest,
             settings: Settings, load_image, progress=lambda items: items,
             match_iou: float = MATCH_IOU) -> list[Result]:
    """Score each configuration on the (ground truth, image file) pairs.

    load_image: path -> RGB uint8 array, as the service decodes images (EXIF orientation applied).
    match_iou: the IoU at which a shown box counts as finding a truth box (recall, fixes, identities).
    """
    names = {n for c in configs for n in (*c.face_models, *c.person_models, *c.descriptor_models)}
    loaded = {name: load_model(manifest[name], settings.models_dir) for name in sorted(names)}
    detectors = {name: ReusedDetector(model) for name, model in loaded.items() if manifest[name].task != "descriptor"}
    annotators = [_annotator(c, detectors, loaded, settings) for c in configs]
    annotations = [[] for _ in configs]
    for _, path in progress(pairs):
        image = load_image(path)
        for annotator, found in zip(annotators, annotations):
            found.append(annotator.annotate(image, keep_below_threshold=True))
        for detector in detectors.values():
            detector.forget()
    truth = [t for t, _ in pairs]
    return [_score(c, a, truth, found, settings, match_iou) for c, a, found in zip(configs, annotators, annotations)]


def _annotator(config: Configuration, detectors: dict, loaded: dict, settings: Settings) -> Annotator:
    # annotate(keep_below_threshold=True) keeps every box for AP; the shipped thresholds apply when scoring.
    return Annotator(
        faces=DetectorEnsemble([detectors[n] for n in config.face_models], config.flip_tta, settings.face_fusion_iou),
        persons=DetectorEnsemble([detectors[n] for n in config.person_models], config.flip_tta,
                                 settings.person_fusion_iou),
        descriptors=DescriptorEnsemble([loaded[n] for n in config.descriptor_models]),
        preset=config.name,
        face_score_threshold=settings.face_score_threshold,
        person_score_threshold=settings.person_score_threshold,
        identity_distance=settings.identity_distance,
        identity_min_face=settings.identity_min_face,
        face_guided_persons=settings.face_guided_persons,
    )


def shown(annotation: ImageAnnotation, settings: Settings) -> ImageAnnotation:
    """What the service would send: the boxes at or above the shipped score thresholds."""
    faces = annotation.faces.scores >= settings.face_score_threshold
    return replace(annotation, faces=annotation.faces[faces], descriptors=annotation.descriptors[faces],
                   quality=annotation.quality[faces],
                   persons=annotation.persons[annotation.persons.scores >= settings.person_score_threshold])


def _score(config: Configuration, annotator: Annotator, truth: list[ImageTruth],
           annotations: list[ImageAnnotation], settings: Settings, match_iou: float) -> Result:
    faces = persons = identity = None
    if config.person_models:
        persons = detection_scores([t.persons for t in truth], [a.persons.boxes for a in annotations],
                                   [a.persons.scores for a in annotations], settings.person_score_threshold, match_iou)
    errors = []
    if config.face_models:
        faces = detection_scores([t.faces for t in truth], [a.faces.boxes for a in annotations],
                                 [a.faces.scores for a in annotations], settings.face_score_threshold, match_iou)
        visible = [shown(a, settings) for a in annotations]
        clusters = annotator.identify(visible).labels if config.descriptor_models else [None] * len(visible)
        people, predicted = [], []
        for image_truth, image, image_clusters in zip(truth, visible, clusters):
            matched = match_boxes(image_truth.faces, image.faces.boxes, image.faces.scores, match_iou)
            found = np.flatnonzero(matched >= 0)
            errors.extend(landmark_errors(image.faces.landmarks[found], image_truth.faces.landmarks[matched[found]],
                                          image_truth.faces.boxes[matched[found]]))
            for d in found if image_clusters is not None else []:
                if image_truth.faces.identities[matched[d]] is not None:
                    people.append(image_truth.faces.identities[matched[d]])
                    predicted.append(int(image_clusters[d]))
        identity = identity_scores(people, predicted) if people else None
    errors = np.asarray(errors, dtype=np.float64)
    errors = errors[~np.isnan(errors)]
    return Result(config, faces, persons, float(errors.mean()) if len(errors) else float("nan"), len(errors),
                  identity, annotations)
