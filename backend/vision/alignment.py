"""Face alignment: warp a face so its five landmarks land on a fixed template (similarity transform)."""
from __future__ import annotations

import cv2
import numpy as np

# The standard ArcFace 112x112 template (left eye, right eye, nose, mouth left, mouth right),
# the points the descriptor networks of the insightface family were trained on.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that best maps src points onto dst (least squares).

    Uniform scale keeps the face's proportions, which is what the descriptor networks expect; a full affine
    fit would stretch faces to match the template.
    """
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(src, np.float32), np.asarray(dst, np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        raise ValueError("landmarks are degenerate: no similarity transform maps them onto the template")
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Crop the face with these five landmarks to a size x size chip in the ArcFace template's pose."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
