"""ArcFace-style face descriptors: any ONNX network that maps a 112x112 face chip aligned to the ArcFace
five-point template to one vector (insightface ArcFace, e.g. buffalo_l w600k_r50; AdaFace exports).

Each face is warped onto the template by a similarity transform of its five landmarks
(backend.vision.alignment.align_face), normalised and put in the colour order given by the manifest
entry (insightface ArcFace: RGB, mean 127.5, std 127.5; AdaFace: BGR, mean 127.5, std 127.5), and the
network's first output is L2-normalised. Networks with a fixed batch of 1 are run face by face.

Faces without all five landmarks (from box-only detectors) are aligned from their box with the
BOX_TEMPLATE below. spec.options["flip"] (default false): also describe the mirrored chip and use the
sum of the two vectors, which evens out left/right asymmetries of pose and lighting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..alignment import align_face
from ..detections import Detections
from ..manifest import ModelSpec
from .base import Embedder, l2_normalise, network_input_size, onnx_session, to_network_input

# Where the five landmarks are assumed to lie in a face box, as fractions of its width and height, when a
# detector gave none. Measured, not invented: the mean of MTCNN's five points relative to its own boxes
# on the frontal portraits in tests/data/photos, made left-right symmetric and rounded. Such boxes run
# from the hairline to the chin and are taller than wide, like SCRFD's; the similarity fit in
# align_face keeps the face's proportions whatever the box's shape.
BOX_TEMPLATE = np.array(
    [[0.276, 0.37], [0.724, 0.37], [0.5, 0.56], [0.296, 0.74], [0.704, 0.74]],
    dtype=np.float32,
)


def landmarks_from_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy boxes -> (N, 5, 2) landmarks placed by BOX_TEMPLATE."""
    origin = boxes[:, None, :2]
    size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
    return origin + BOX_TEMPLATE * size


def aligned_chips(image: np.ndarray, faces: Detections, chip_size: int, spec: ModelSpec,
                  face_scale: float = 1.0) -> np.ndarray:
    """Each face aligned by its five landmarks (placed from its box where it has none) onto the ArcFace
    template (shrunk to face_scale of the chip), as the network's input: (N, 3, chip_size, chip_size)."""
    landmarks = faces.landmarks.copy()
    missing = ~faces.has_landmarks
    landmarks[missing] = landmarks_from_boxes(faces.boxes[missing])
    return np.concatenate([to_network_input(align_face(image, points, chip_size, face_scale), spec)
                           for points in landmarks])


class ArcFace(Embedder):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        network_input = self.session.get_inputs()[0]
        self.input_name = network_input.name
        width, height = network_input_size(self.session, spec)
        if width != height:
            raise ValueError(f"model {spec.name!r}: aligned face chips are square, input_size is {width}x{height}")
        self.chip_size = width
        # A symbolic batch axis (a name, not a number) takes all faces in one run.
        self.batch_size = network_input.shape[0] if isinstance(network_input.shape[0], int) else None
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.flip = bool(spec.options.get("flip", False))

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chips = aligned_chips(image, faces, self.chip_size, self.spec)
        descriptors = self._run(chips)
        if self.flip:
            descriptors = descriptors + self._run(np.ascontiguousarray(chips[..., ::-1]))
        return l2_normalise(descriptors)

    def _run(self, chips: np.ndarray) -> np.ndarray:
        step = self.batch_size or len(chips)
        outputs = [
            self.session.run(None, {self.input_name: chips[start : start + step]})[0]
            for start in range(0, len(chips), step)
        ]
        return np.concatenate(outputs).reshape(len(chips), -1).astype(np.float32)
