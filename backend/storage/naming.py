"""The ids annotators see for the faces of a batch of images: project-wide ones from the face store, or
ids that hold within the batch alone when there is no project to remember them in."""
from __future__ import annotations

import numpy as np

from .faces import FaceStore, NewFace


def batch_identity_names(labels: list) -> list[list[str]]:
    """Cluster indices -> readable ids (person_1, person_2, ...) numbered in order of first appearance."""
    order: dict[int, str] = {}
    names = []
    for image_labels in labels:
        names.append([order.setdefault(int(label), f"person_{len(order) + 1}") for label in image_labels])
    return names


def project_identities(store: FaceStore, project: str, tasks: list[str], annotations: list,
                           labels: list, regions, model_version: str,
                           threshold: float) -> tuple[list[list[str]], list[np.ndarray]]:
    """Project-wide ids and their confidence: the faces of these tasks' annotations (vision ImageAnnotations)
    join the project's identities in the store; labels are the batch's clusters (faces with equal labels
    are one person). The confidence is the store's (FaceStore.assign_with_confidence): the face's quality
    times how clearly its nearest stored faces voted.

    regions(i) is the region id a task's i-th face gets in its prediction, so that the annotation Label
    Studio later sends back names the same faces.
    """
    faces = [
        NewFace(task, regions(i), a.faces.boxes[i], a.faces.landmarks[i], a.descriptors[i], int(image_labels[i]),
                float(a.quality[i]))
        for task, a, image_labels in zip(tasks, annotations, labels) for i in range(len(a.faces))
    ]
    assigned = iter(store.assign_with_confidence(project, faces, model_version, threshold))
    per_image = [[next(assigned) for _ in range(len(a.faces))] for a in annotations]
    return ([[face.identity for face in image] for image in per_image],
            [np.array([face.confidence for face in image]) for image in per_image])
