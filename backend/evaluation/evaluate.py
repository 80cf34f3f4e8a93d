"""Run every configuration (each model alone, each preset's ensemble, with and without flip TTA) over the
ground-truth images and score it.

Cost and memory do not grow with the number of configurations the way running each one would:
- each image is loaded once, and each model runs on it once per orientation (a ReusedDetector hands the
  same boxes to every ensemble that asks); the ensembles are fused from those cached boxes;
- descriptors are computed only for the faces the service would show, the only ones identities are
  scored on (describing every low-scoring candidate cost most of the time);
- a configuration keeps, per image, only its boxes and the shown faces' descriptors until it is scored,
  and once scored only its numbers (the configuration the gallery shows also keeps its shown boxes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Settings
from ..vision.annotator import Annotator, ImageAnnotation
from ..vision.detections import Detections
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
    score_faces: bool = True  # False: its face models only guide the search for persons (no face truth)

    @property
    def models(self) -> tuple[str, ...]:
        return (*self.face_models, *self.person_models, *self.descriptor_models)


@dataclass(frozen=True)
class ScoredClasses:
    """Which classes the ground truth lets us score: a class with no box in it, "don't care" regions aside (a
    face-only or person-only set), says nothing about the boxes a model finds."""

    faces: bool
    persons: bool

    @classmethod
    def of(cls, truth: list[ImageTruth]) -> "ScoredClasses":
        return cls(faces=any((~t.faces.ignore).any() for t in truth),
                   persons=any((~t.persons.ignore).any() for t in truth))

    def notes(self) -> list[str]:
        return ([] if self.faces else ["The ground truth has no faces: faces, landmarks and identities are not "
                                       "scored; face models run only where they guide the search for persons."]) + \
               ([] if self.persons else ["The ground truth has no persons: people are not scored and person "
                                         "models do not run."])


@dataclass
class Result:
    configuration: Configuration
    faces: DetectionScores | None  # None when the configuration has no face model, or faces are not scored
    persons: DetectionScores | None
    landmark_error: float  # mean over landmark_faces matched faces; NaN when there are none
    landmark_faces: int
    identity: IdentityScores | None
    shown: list[ImageAnnotation] | None  # per image, what the service would send; kept only where asked for

    @property
    def fixes(self) -> int:
        boxes = sum(d.missing + d.false for d in (self.faces, self.persons) if d is not None)
        return boxes + (self.identity.merges + self.identity.splits if self.identity else 0)


@dataclass
class ImageOutput:
    """One configuration's output on one image, reduced to what scoring needs."""

    faces: Detections  # every face box, whatever its score (AP and the precision-recall curve need them)
    persons: Detections
    shown: ImageAnnotation  # at or above the shipped thresholds, with the faces' descriptors


def available(manifest: Manifest, settings: Settings, names) -> bool:
    """Whether every named model's weights are here (a preset needing a download cannot be evaluated)."""
    paths = [manifest[name].path(settings.models_dir) for name in names]
    return all(path is None or path.exists() for path in paths)


def configurations(manifest: Manifest, settings: Settings, presets: list[str], models: list[str],
                   flips: list[bool], scored: ScoredClasses = ScoredClasses(True, True)) -> list[Configuration]:
    """Each model alone, then each preset's ensemble; every one with each flip setting in `flips`.

    A face model alone is scored with the shipped descriptors (DESCRIPTOR_MODELS or MODEL_PRESET's), so that
    its identity scores say what its boxes do to identities. Models of a class the ground truth lacks are
    left out, except face models that guide a preset's search for persons (FACE_GUIDED_PERSONS).
    """
    descriptors = settings.descriptor_models or tuple(manifest.presets[settings.model_preset].get("descriptor", []))
    found = []
    for name in models:
        task = manifest[name].task
        if task == "descriptor":
            raise ValueError(f"{name} is a descriptor model: --models takes face and person detectors")
        if not (scored.faces if task == "face" else scored.persons):
            continue
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
        persons = chosen["person"] if scored.persons else ()
        faces_needed = scored.faces or (bool(persons) and settings.face_guided_persons)
        for flip in flips:
            found.append(Configuration(
                name=preset + ("+flip" if flip else ""),
                face_models=chosen["face"] if faces_needed else (),
                person_models=persons,
                descriptor_models=chosen["descriptor"] if scored.faces else (),
                flip_tta=flip,
                preset=preset,
                score_faces=scored.faces,
            ))
    return found


def gallery_configuration(configs: list[Configuration], settings: Settings) -> Configuration:
    """The configuration whose worst misses the report shows: the shipped one if it is scored, else the first
    preset's ensemble, else the first configuration."""
    shipped = settings.model_preset + ("+flip" if settings.flip_tta else "")
    return next((c for c in configs if c.name == shipped), next((c for c in configs if c.preset), configs[0]))


class ReusedDetector:
    """A detector shared by several configurations: it runs once per image (and once per mirrored image, or
    crop) and hands the same boxes to every ensemble that asks. forget() drops them before the next image."""

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


class ShownFacesDescriptors(DescriptorEnsemble):
    """A configuration's descriptor ensemble that describes only the faces at or above the shipped threshold
    (the others get NaN rows): identities are scored on shown faces only."""

    def __init__(self, embedders, face_score_threshold: float):
        super().__init__(embedders)
        self.face_score_threshold = face_score_threshold

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        shown = faces.scores >= self.face_score_threshold
        descriptors = np.full((len(faces), self.dim), np.nan, dtype=np.float32)
        descriptors[shown] = super().embed(image, faces[shown])
        return descriptors


class NoProgress:
    def update(self, count: int = 1):
        pass

    def close(self):
        pass


def evaluate(pairs: list[tuple[ImageTruth, Path]], configs: list[Configuration], manifest: Manifest,
             settings: Settings, load_image, progress=lambda total: NoProgress(), match_iou: float = MATCH_IOU,
             keep_shown: Configuration | None = None) -> list[Result]:
    """Score each configuration on the (ground truth, image file) pairs.

    load_image: path -> the image as the service decodes it (service.images.LoadedImage: RGB pixels, upright,
      reduced above MAX_WORK_PIXELS with their scale); boxes are scored in the image's own pixels, as the
      ground truth and Label Studio have them.
    progress: total -> a counter with update(n) and close() (a tqdm) of images x models: a step for each
      detector once it has run on the whole image (and on its mirror image, if a configuration flips), and
      for each descriptor model once every configuration is fused (crops, tiles) and its faces described.
    match_iou: the IoU at which a shown box counts as finding a truth box (recall, fixes, identities).
    keep_shown: the configuration whose shown boxes the result keeps (for the report's gallery).
    """
    names = sorted({n for c in configs for n in c.models})
    loaded = {name: load_model(manifest[name], settings.models_dir) for name in names}
    detectors = {name: ReusedDetector(model) for name, model in loaded.items() if manifest[name].task != "descriptor"}
    mirrored = {name for c in configs if c.flip_tta for name in (*c.face_models, *c.person_models)}
    annotators = [_annotator(c, detectors, loaded, settings) for c in configs]
    outputs: list[list[ImageOutput]] = [[] for _ in configs]
    counter = progress(len(pairs) * len(loaded))
    try:
        for _, path in pairs:
            loaded_image = load_image(path)
            image = loaded_image.pixels
            for name, detector in detectors.items():
                detector.detect(image)
                if name in mirrored:
                    detector.detect(image[:, ::-1])
                counter.update(1)
            for annotator, found in zip(annotators, outputs):
                annotation = annotator.annotate(image, keep_below_threshold=True)
                found.append(_image_output(annotation, settings, loaded_image.scale))
            counter.update(len(loaded) - len(detectors))
            for detector in detectors.values():
                detector.forget()
    finally:
        counter.close()
    truth = [t for t, _ in pairs]
    results = []
    for index, (config, annotator) in enumerate(zip(configs, annotators)):
        results.append(_score(config, annotator, truth, outputs[index], settings, match_iou, config == keep_shown))
        outputs[index] = None  # scored: only the numbers are kept
    return results


def _annotator(config: Configuration, detectors: dict, loaded: dict, settings: Settings) -> Annotator:
    # annotate(keep_below_threshold=True) keeps every box for AP; the shipped thresholds apply when scoring.
    return Annotator(
        faces=DetectorEnsemble([detectors[n] for n in config.face_models], config.flip_tta, settings.face_fusion_iou),
        persons=DetectorEnsemble([detectors[n] for n in config.person_models], config.flip_tta,
                                 settings.person_fusion_iou),
        descriptors=ShownFacesDescriptors([loaded[n] for n in config.descriptor_models],
                                          settings.face_score_threshold),
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


def _image_output(annotation: ImageAnnotation, settings: Settings, scale: float) -> ImageOutput:
    """The annotation reduced to what scoring needs, in the pixels of the image itself (`scale`: the decoded
    pixels' width per image width)."""
    if scale != 1.0:
        annotation = replace(annotation, faces=annotation.faces.scaled(1 / scale, 1 / scale),
                             persons=annotation.persons.scaled(1 / scale, 1 / scale),
                             width=round(annotation.width / scale), height=round(annotation.height / scale))
    return ImageOutput(faces=annotation.faces, persons=annotation.persons, shown=shown(annotation, settings))


def _score(config: Configuration, annotator: Annotator, truth: list[ImageTruth], outputs: list[ImageOutput],
           settings: Settings, match_iou: float, keep_shown: bool) -> Result:
    faces = persons = identity = None
    if config.person_models:
        persons = detection_scores([t.persons for t in truth], [o.persons.boxes for o in outputs],
                                   [o.persons.scores for o in outputs], settings.person_score_threshold, match_iou)
    errors = []
    if config.face_models and config.score_faces:
        faces = detection_scores([t.faces for t in truth], [o.faces.boxes for o in outputs],
                                 [o.faces.scores for o in outputs], settings.face_score_threshold, match_iou)
        visible = [o.shown for o in outputs]
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
                  identity, [o.shown for o in outputs] if keep_shown else None)
