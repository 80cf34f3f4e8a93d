"""Face quality for identification: can this crop tell who it is?

Descriptors of tiny or blurred faces land near everyone's; their identity must be reported with low
confidence instead of being trusted like a sharp portrait's.
"""
from __future__ import annotations

import cv2
import numpy as np

from .detections import Detections

# Variance of the Laplacian of a face resized to 64x64 grey. Measured on tests/data/photos: sharp faces
# 700-2900; 70-px faces blurred by an 11x11 Gaussian 20-120, where the dlib descriptor's distance to the
# same person doubles (0.035 -> 0.07-0.11) and nears other people's (0.15). Above _SHARP: fully sharp.
_SHARP = 150.0
_PROBE_SIZE = 64


def face_quality(image: np.ndarray, faces: Detections, min_face: int) -> np.ndarray:
    """(N,) scores in [0, 1]: 1 for a sharp face at least 1.5 * min_face wide, 0 for one min_face / 2 wide
    or blurred beyond recognition. (A sharp 33-px face still kept its distance to the same person, 0.048.)"""
    quality = np.zeros(len(faces), dtype=np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    for i, (x1, y1, x2, y2) in enumerate(faces.boxes.astype(int)):
        crop = grey[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
        if crop.size == 0:
            continue
        width = min(x2 - x1, y2 - y1)
        size_score = np.clip((width - min_face / 2) / min_face, 0.0, 1.0)
        probe = cv2.resize(crop, (_PROBE_SIZE, _PROBE_SIZE), interpolation=cv2.INTER_AREA)
        sharpness = cv2.Laplacian(probe, cv2.CV_32F).var()
        quality[i] = size_score * np.clip(sharpness / _SHARP, 0.0, 1.0)
    return quality
