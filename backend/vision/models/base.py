"""What every model adapter shares: the ONNX Runtime session and the two interfaces the ensembles call."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..detections import Detections, nms
from ..manifest import ModelSpec


class Detector:
    """A face or person detector. detect() takes an RGB uint8 image and returns Detections in its pixels."""

    def __init__(self, spec: ModelSpec, models_dir: Path):
        self.spec = spec
        self.name = spec.name
        self.models_dir = Path(models_dir)

    def detect(self, image: np.ndarray) -> Detections:
        raise NotImplementedError


class LetterboxOnnxDetector(Detector):
    """A detector that is one ONNX graph fed a letterboxed image (SCRFD, YOLO families): owns the session."""

    default_nms_iou = 0.45
    default_pad_value = 0

    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = network_input_size(self.session, spec)
        self.nms_iou = spec.options.get("nms_iou", self.default_nms_iou)
        self.pad_value = spec.options.get("pad_value", self.default_pad_value)

    def run_letterboxed(self, image: np.ndarray) -> tuple[list[np.ndarray], float]:
        """The graph's outputs for the letterboxed image, and the scale back to original pixels."""
        canvas, scale = letterbox(image, self.input_size, self.pad_value)
        return self.session.run(None, {self.input_name: to_network_input(canvas, self.spec)}), scale


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows (or one vector, along the last axis) scaled to unit length; a zero row stays zero."""
    vectors = np.asarray(vectors)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class Embedder:
    """A face descriptor network. embed() returns one L2-normalised row per face of `faces`."""

    dim: int

    def __init__(self, spec: ModelSpec, models_dir: Path):
        self.spec = spec
        self.name = spec.name
        self.models_dir = Path(models_dir)

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        raise NotImplementedError


def onnx_providers() -> list[str]:
    """Execution providers from ORT_PROVIDERS (comma-separated), keeping only those this build has."""
    import onnxruntime as ort

    wanted = [p.strip() for p in os.environ.get("ORT_PROVIDERS", "CPUExecutionProvider").split(",") if p.strip()]
    available = ort.get_available_providers()
    providers = [p for p in wanted if p in available]
    return providers or ["CPUExecutionProvider"]


def onnx_session(path: Path):
    import onnxruntime as ort

    if not Path(path).exists():
        raise FileNotFoundError(
            f"model file {path} is missing: run `autoannotator models download` or copy it there by hand"
        )
    options = ort.SessionOptions()
    threads = int(os.environ.get("ORT_THREADS", "0"))  # 0: ONNX Runtime picks one per core
    options.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning: on a 2-core machine shared with other work (and with the
    # other requests of the worker), spinning threads took the cores from the threads with work; the default
    # ensemble took 0.60 s per 1-Mpx photo at load 1 with spinning, 0.44 s without (README, Speed).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=onnx_providers())


class OnnxModel:
    """An ONNX graph with one input, called like a LiteRTModel: `model(tensor)` returns its outputs, and
    input_shape / output_shapes give their fixed shapes (for adapters that run either kind of file)."""

    def __init__(self, path: Path):
        self.session = onnx_session(path)
        (self._input,) = self.session.get_inputs()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._input.shape)

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(output.shape) for output in self.session.get_outputs()]

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self._input.name: tensor.astype(np.float32, copy=False)})


def to_network_input(image: np.ndarray, spec: ModelSpec, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 1x3xHxW, in the model's colour order and normalisation."""
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
    if spec.color == "bgr":
        image = image[..., ::-1]
    blob = (image.astype(np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 0) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio, pad right and bottom to `size` (width, height).

    Returns the padded image and the scale, so that original = network / scale.
    """
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    new_w, new_h = max(1, int(round(image.shape[1] * scale))), max(1, int(round(image.shape[0] * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), pad_value, dtype=image.dtype)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


# Decoding helpers shared by the ONNX detector families (SCRFD, YOLO, YOLOX, RT-DETR).


def network_input_size(session, spec: ModelSpec) -> tuple[int, int]:
    """(width, height) to feed: the manifest's input_size, else the model's own fixed input shape."""
    if spec.input_size is not None:
        return tuple(spec.input_size)
    height, width = session.get_inputs()[0].shape[2:4]
    if not (isinstance(width, int) and isinstance(height, int)):
        raise ValueError(f"model {spec.name!r} accepts any input size: set input_size in its manifest entry")
    return width, height


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) centre x, centre y, width, height -> x1, y1, x2, y2."""
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def stride_grid(input_size: tuple[int, int], strides) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a dense detection head's feature maps, in the order such heads emit them:
    stride by stride, then row by row, then column by column.

    Returns each cell's (column, row) in cell units, (N, 2), and its stride, (N,).
    """
    width, height = input_size
    cells, cell_strides = [], []
    for stride in strides:
        rows, columns = np.mgrid[: height // stride, : width // stride]
        cells.append(np.stack([columns.ravel(), rows.ravel()], axis=1))
        cell_strides.append(np.full(columns.size, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(cell_strides).astype(np.float32)


def finish_detections(
    candidates: Detections,
    image_shape: tuple[int, ...],
    scale: tuple[float, float],
    score_threshold: float,
    iou_threshold: float,
) -> Detections:
    """From a detector's decoded candidates in network-input pixels to its answer in image pixels.

    Keeps candidates scoring at least score_threshold, undoes the resize (image = network / scale,
    per axis), clips boxes to the image, drops degenerate boxes and applies NMS. Landmarks are not
    clipped: a point outside the image is still right for aligning a face cut by the border.
    """
    height, width = image_shape[:2]
    kept = candidates[candidates.scores >= score_threshold]
    kept = kept.scaled(1.0 / scale[0], 1.0 / scale[1]).clipped(width, height).valid()
    return nms(kept, iou_threshold)
