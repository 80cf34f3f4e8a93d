"""The whole vision pipeline for one image, and identities across many."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clustering import cluster_identities, identity_confidence
from .detections import Detections
from .ensemble import DescriptorEnsemble, DetectorEnsemble
from .manifest import Manifest, load_manifest
from .models import load_model
from .quality import face_quality


@dataclass
class ImageAnnotation:
    width: int
    height: int
    faces: Detections
    descriptors: np.ndarray  # (faces, D) unit vectors
    quality: np.ndarray  # (faces,) 0..1, see quality.face_quality
    # persons.landmarks: each person's 17 body keypoints (N, 17, 2) in BODY_KEYPOINT_NAMES order, fused from the
    # members that give them (MoveNet), NaN where no member found a point; all NaN when none gives keypoints.
    persons: Detections


@dataclass
class Identities:
    """Identity of every face of a batch of images: cluster index and how much to trust it."""

    labels: list[np.ndarray]  # per image, (faces,) int cluster index shared across the batch
    confidence: list[np.ndarray]  # per image, (faces,) 0..1


# Where to look for the body of a person whose face was found, in face widths (across) and face-box
# heights (above the box's top and below it): a standing adult is about 7.5 heads tall, and a face box
# (brows to chin) is about 0.75 of a head. On tests/data/photos/street_bus.jpg, MediaPipe's pose detector
# finds the man it misses in the whole image in such a crop; crops 6 faces wide took in his neighbour.
BODY_WIDTH, BODY_ABOVE, BODY_BELOW = 3.0, 0.7, 10.0


def body_search_regions(faces: Detections, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """For each face, the crop its person's body should lie in (clipped to the image) and the face centre."""
    height, width = shape[:2]
    face_w = faces.boxes[:, 2] - faces.boxes[:, 0]
    face_h = faces.boxes[:, 3] - faces.boxes[:, 1]
    centre_x = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
    crops = np.stack([
        centre_x - BODY_WIDTH / 2 * face_w, faces.boxes[:, 1] - BODY_ABOVE * face_h,
        centre_x + BODY_WIDTH / 2 * face_w, faces.boxes[:, 1] + BODY_BELOW * face_h,
    ], axis=1)
    crops = np.clip(crops, 0, [width, height, width, height]).astype(int)
    centres = np.stack([centre_x, (faces.boxes[:, 1] + faces.boxes[:, 3]) / 2], axis=1)
    return crops, centres


class Annotator:
    def __init__(
        self,
        faces: DetectorEnsemble,
        persons: DetectorEnsemble,
        descriptors: DescriptorEnsemble,
        preset: str,
        face_score_threshold: float,
        person_score_threshold: float,
        identity_distance: float | None,
        identity_min_face: int,
        face_guided_persons: bool = True,
    ):
        self.faces = faces
        self.persons = persons
        self.descriptors = descriptors
        self.preset = preset
        self.face_score_threshold = face_score_threshold
        self.person_score_threshold = person_score_threshold
        self.identity_distance = identity_distance if identity_distance is not None else (
            descriptors.identity_distance if descriptors.embedders else 0.0
        )
        self.identity_min_face = identity_min_face
        self.face_guided_persons = face_guided_persons

    @classmethod
    def from_settings(cls, settings, manifest: Manifest | None = None) -> "Annotator":
        """Load the models that the settings name (a preset, or explicit model lists)."""
        manifest = manifest or load_manifest(settings.manifest_path)
        chosen = manifest.preset(settings.model_preset)
        for task, override in (("face", settings.face_models), ("person", settings.person_models),
                               ("descriptor", settings.descriptor_models)):
            if override:
                chosen[task] = [manifest[name] for name in override]
                wrong = [s.name for s in chosen[task] if s.task != task]
                if wrong:
                    raise ValueError(f"{', '.join(wrong)} cannot serve as {task} models")
        load = lambda specs: [load_model(spec, settings.models_dir) for spec in specs]  # noqa: E731
        return cls(
            faces=DetectorEnsemble(load(chosen["face"]), settings.flip_tta, settings.face_fusion_iou),
            persons=DetectorEnsemble(load(chosen["person"]), settings.flip_tta, settings.person_fusion_iou),
            descriptors=DescriptorEnsemble(load(chosen["descriptor"])),
            preset=settings.model_preset,
            face_score_threshold=settings.face_score_threshold,
            person_score_threshold=settings.person_score_threshold,
            identity_distance=settings.identity_distance,  # None: the descriptors' own threshold
            identity_min_face=settings.identity_min_face,
            face_guided_persons=settings.face_guided_persons,
        )

    @property
    def model_version(self) -> str:
        """Names the ensemble, so that Label Studio can tell predictions of different ensembles apart."""
        parts = [f"faces={self.faces.name}", f"persons={self.persons.name}", f"ids={self.descriptors.name}"]
        return f"autoannotator-{self.preset}:" + ";".join(p for p in parts if not p.endswith("="))

    def annotate(self, image: np.ndarray, keep_below_threshold: bool = False) -> ImageAnnotation:
        """image: RGB uint8, H x W x 3.

        keep_below_threshold: also return the boxes under the score thresholds (precision-recall curves need
        them); the search for bodies still starts only from the faces that would be shown.
        """
        faces = self.faces.detect(image)
        shown_faces = faces[faces.scores >= self.face_score_threshold]
        if self.face_guided_persons and len(shown_faces):
            persons = self.persons.detect(image, *body_search_regions(shown_faces, image.shape))
        else:
            persons = self.persons.detect(image)
        if not keep_below_threshold:
            faces = shown_faces
            persons = persons[persons.scores >= self.person_score_threshold]
        return ImageAnnotation(
            width=image.shape[1],
            height=image.shape[0],
            faces=faces,
            descriptors=self.descriptors.embed(image, faces),
            quality=face_quality(image, faces, self.identity_min_face),
            persons=persons,
        )

    def identify(self, annotations: list[ImageAnnotation]) -> Identities:
        """Cluster the faces of all these images together: one label per person across the batch."""
        counts = [len(a.faces) for a in annotations]
        descriptors = np.concatenate([a.descriptors for a in annotations]) if annotations else np.zeros((0, 1))
        quality = np.concatenate([a.quality for a in annotations]) if annotations else np.zeros(0)
        labels = cluster_identities(descriptors, self.identity_distance, quality)
        confidence = identity_confidence(descriptors, labels, quality)
        splits = np.cumsum(counts)[:-1]
        return Identities(list(np.split(labels, splits)), list(np.split(confidence, splits)))
