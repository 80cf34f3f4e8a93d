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
    """The 2x3 rotation + uniform scale + translation that maps src points onto dst with the least sum of
    squared distances (Umeyama 1991, without reflections): the fit the ArcFace template was made with
    (insightface's norm_crop), so every point counts and none is voted out as an outlier.

    Points that are NaN in src or dst are left out; at least two distinct points must remain. Uniform scale
    keeps the face's proportions, which is what the descriptor networks expect; a full affine fit would
    stretch faces to match the template.
    """
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise ValueError(f"{len(src)} source points for {len(dst)} template points")
    known = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    src, dst = src[known], dst[known]
    src_centred, dst_centred = src - src.mean(axis=0), dst - dst.mean(axis=0)
    spread = (src_centred**2).sum()
    if len(src) < 2 or spread < 1e-12:
        raise ValueError(f"landmarks are degenerate: {len(src)} known, distinct points are too few to place a face")
    # In 2-D, rotation times scale is the complex number a = c + i s that minimises sum |dst - a src|^2 over
    # the centred points: a = sum(conj(src) dst) / sum |src|^2. This is Umeyama's SVD solution written out.
    x, y = src_centred.T
    u, v = dst_centred.T
    c = (x * u + y * v).sum() / spread
    s = (x * v - y * u).sum() / spread
    rotation_scale = np.array([[c, -s], [s, c]])
    translation = dst.mean(axis=0) - rotation_scale @ src.mean(axis=0)
    return np.hstack([rotation_scale, translation[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, face_scale: float = 1.0) -> np.ndarray:
    """Crop the face with these five landmarks (NaN where unknown, at least two known) to a size x size chip
    in the ArcFace template's pose.

    face_scale: the template's size as a share of the chip's: 1 is the ArcFace crop (brows to chin); below 1
    the face is smaller, about the chip's centre, with more of the head around it.
    """
    template = ((ARCFACE_TEMPLATE_112 - 56.0) * face_scale + 56.0) * (size / 112.0)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
