"""The ONNX model adapters against tiny graphs with each family's real input/output signature.

Each detector graph returns constant tensors laid out as the real export lays them out, holding a few
hand-placed candidates, so the decoded boxes and landmarks in the ORIGINAL image's pixels are known by
hand. The images are not square, so undoing the letterbox (or the stretch, for RT-DETR) is exercised;
every graph also holds a duplicate that NMS must remove and a candidate below the score threshold.
The descriptor graph is a linear map of the aligned chip, so the expected descriptor can be computed
directly from the pixels where the alignment must put the face.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backend.vision.alignment import ARCFACE_TEMPLATE_112
from backend.vision.detections import FACE, PERSON, Detections
from backend.vision.manifest import ModelSpec
from backend.vision.models import load_model
from backend.vision.models.arcface import BOX_TEMPLATE

NAN = np.nan


def write_model(path, inputs, outputs, nodes=(), initializers=()):
    """Save a graph; inputs/outputs are (name, TensorProto type, shape) triples."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def constant_outputs(name_to_array: dict[str, np.ndarray]) -> tuple[list, list]:
    """Constant nodes producing these arrays as graph outputs, and the outputs' value infos."""
    nodes, outputs = [], []
    for name, array in name_to_array.items():
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name)))
        elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        outputs.append((name, elem_type, list(array.shape)))
    return nodes, outputs


def write_constant_model(path, input_name, input_shape, name_to_array):
    nodes, outputs = constant_outputs(name_to_array)
    write_model(path, [(input_name, TensorProto.FLOAT, input_shape)], outputs, nodes)


def make_model(tmp_path, family, task, **fields):
    spec = ModelSpec(name=family, family=family, task=task, file=f"{family}.onnx", **fields)
    return spec, tmp_path / spec.file


def check(detections: Detections, boxes, scores, label, landmarks=None):
    """Detections must be exactly these (in order of falling score)."""
    np.testing.assert_allclose(detections.boxes, np.asarray(boxes, np.float32).reshape(-1, 4), atol=1e-3)
    np.testing.assert_allclose(detections.scores, scores, atol=1e-5)
    assert (detections.labels == label).all()
    if landmarks is not None:
        np.testing.assert_allclose(detections.landmarks, np.asarray(landmarks, np.float32), atol=1e-3)


# ---------------------------------------------------------------------------------------------- SCRFD

SCRFD_INPUT = (128, 128)
# 256 wide, 128 high: the letterbox scales by 0.5 and pads below, so image pixels = network pixels * 2.
SCRFD_IMAGE = np.zeros((128, 256, 3), np.uint8)


def scrfd_outputs(num_outputs: int, batched: bool) -> dict[str, np.ndarray]:
    """The insightface layout: per stride scores (N, 1), then distances (N, 4), then landmark offsets
    (N, 10), N = cells * anchors with a cell's anchors consecutive, all in units of the stride."""
    strides = (8, 16, 32) if num_outputs in (6, 9) else (8, 16, 32, 64, 128)
    anchors = 2 if len(strides) == 3 else 1
    cells = [(SCRFD_INPUT[0] // s) * (SCRFD_INPUT[1] // s) for s in strides]
    scores = [np.zeros((n * anchors, 1), np.float32) for n in cells]
    distances = [np.zeros((n * anchors, 4), np.float32) for n in cells]
    offsets = [np.zeros((n * anchors, 10), np.float32) for n in cells]

    def put(level, column, row, score, distance, offset=np.zeros(10)):
        index = (row * (SCRFD_INPUT[0] // strides[level]) + column) * anchors + anchors - 1
        scores[level][index] = score
        distances[level][index] = distance
        offsets[level][index] = offset

    # face A: stride 8, cell (5, 3) -> point (40, 24)
    put(0, 5, 3, 0.9, [2, 1, 3, 2], [-1, -0.5, 1, -0.5, 0, 0.25, -0.75, 1, 0.75, 1])
    # its duplicate from the next cell, point (48, 24): box (23.2, 16, 64, 40), IoU 0.98 with A
    put(0, 6, 3, 0.8, [3.1, 1, 2, 2])
    # below the 0.5 threshold: stride 16, cell (1, 1)
    put(1, 1, 1, 0.3, [1, 1, 1, 1])
    # face B: stride 32, cell (2, 1) -> point (64, 32)
    put(2, 2, 1, 0.7, [0.5, 0.5, 0.5, 0.5], [-0.25, -0.25, 0.25, -0.25, 0, 0, -0.2, 0.3, 0.2, 0.3])
    if len(strides) == 5:  # face C: stride 128, the single cell -> point (0, 0)
        put(4, 0, 0, 0.6, [0, 0, 0.5, 0.5])

    groups = [("score", scores), ("bbox", distances)] + ([("kps", offsets)] if num_outputs in (9, 15) else [])
    named = {f"{kind}_{s}": array for kind, arrays in groups for s, array in zip(strides, arrays)}
    return {name: array[None] if batched else array for name, array in named.items()}


@pytest.mark.parametrize("batched", [False, True], ids=["no_batch_axis", "batch_axis"])
@pytest.mark.parametrize("num_outputs", [6, 9, 10, 15])
def test_scrfd_decodes_every_variant_into_image_pixels(tmp_path, num_outputs, batched):
    spec, path = make_model(
        tmp_path, "scrfd", "face", input_size=SCRFD_INPUT, mean=(127.5,) * 3, std=(128.0,) * 3, score_threshold=0.5
    )
    write_constant_model(path, "input.1", [1, 3, 128, 128], scrfd_outputs(num_outputs, batched))

    faces = load_model(spec, tmp_path).detect(SCRFD_IMAGE)

    # A: point (40, 24), box (40-16, 24-8, 40+24, 24+16) = (24, 16, 64, 40) network -> x2 in the image.
    # B: point (64, 32), box (48, 16, 80, 48) -> (96, 32, 160, 96). C: (0, 0, 64, 64) -> (0, 0, 128, 128).
    boxes, scores = [[48, 32, 128, 80], [96, 32, 160, 96]], [0.9, 0.7]
    landmarks = [
        [[64, 40], [96, 40], [80, 52], [68, 64], [92, 64]],
        [[112, 48], [144, 48], [128, 64], [115.2, 83.2], [140.8, 83.2]],
    ]
    if num_outputs in (10, 15):
        boxes.append([0, 0, 128, 128])
        scores.append(0.6)
        landmarks.append([[0, 0]] * 5)  # C's offsets are all zero: every landmark at its point
    if num_outputs in (6, 10):
        landmarks = np.full((len(boxes), 5, 2), NAN)
    check(faces, boxes, scores, FACE, landmarks)


def test_scrfd_rejects_an_unknown_output_layout(tmp_path):
    spec, path = make_model(tmp_path, "scrfd", "face", input_size=SCRFD_INPUT)
    outputs = scrfd_outputs(9, batched=False)
    del outputs["kps_32"]
    write_constant_model(path, "input.1", [1, 3, 128, 128], outputs)
    with pytest.raises(ValueError, match="8 outputs|has 8"):
        load_model(spec, tmp_path)


# ------------------------------------------------------------------------------------------ YOLO face

YOLO_INPUT = (64, 64)
# 160 wide, 80 high: the letterbox scales by 0.4 and pads below, so image pixels = network pixels / 0.4.
YOLO_IMAGE = np.zeros((80, 160, 3), np.uint8)
CANDIDATES = 40

FACE_A_LANDMARKS = [[17, 10, 0.9], [23, 10, 0.9], [20, 12, 0.9], [18, 14, 0.2], [22, 14, 0.9]]
FACE_B_LANDMARKS = [[48, 8, 0.9], [52, 8, 0.9], [50, 10, 0.9], [48, 12, 0.9], [52, 12, 0.9]]


def yolo_face_output(layout: str) -> np.ndarray:
    """Candidates as (box cx cy w h, score parts, 5 x (x, y, visibility)) rows; YOLOv7-face splits the
    score into objectness and class score, YOLOv8-face has one score and puts candidates last."""
    dummy = [[0, 0, 0]] * 5
    candidates = {  # row: (box, (v7 objectness, v7 class score), v8 score, landmarks)
        3: ([20, 12, 10, 8], (0.95, 0.95), 0.9, FACE_A_LANDMARKS),
        7: ([20.5, 12, 10, 8], (0.9, 0.9), 0.8, dummy),  # A's duplicate, IoU 0.9
        9: ([40, 20, 10, 10], (0.9, 0.4), 0.3, dummy),  # below 0.5 (in v7 only once the parts multiply)
        11: ([50, 10, 8, 8], (0.8, 0.8), 0.6, FACE_B_LANDMARKS),
    }
    if layout == "yolov7":
        rows = np.zeros((CANDIDATES, 21), np.float32)
        for row, (box, parts, _, points) in candidates.items():
            rows[row] = box + list(parts) + list(np.ravel(points))
        return rows[None]
    rows = np.zeros((CANDIDATES, 20), np.float32)
    for row, (box, _, score, points) in candidates.items():
        rows[row] = box + [score] + list(np.ravel(points))
    return rows.T[None].copy()


@pytest.mark.parametrize("layout, scores", [("yolov7", [0.9025, 0.64]), ("yolov8", [0.9, 0.6])])
def test_yolo_face_decodes_boxes_and_visible_landmarks(tmp_path, layout, scores):
    spec, path = make_model(tmp_path, "yolo_face", "face", input_size=YOLO_INPUT, std=(255.0,) * 3, score_threshold=0.5)
    write_constant_model(path, "images", [1, 3, 64, 64], {"output0": yolo_face_output(layout)})

    faces = load_model(spec, tmp_path).detect(YOLO_IMAGE)

    # A: (15, 8, 25, 16) network; its fourth landmark's visibility 0.2 < 0.5 leaves it unknown.
    # B: (46, 6, 54, 14) network.
    to_image = lambda points: [[x / 0.4, y / 0.4] if v >= 0.5 else [NAN, NAN] for x, y, v in points]  # noqa: E731
    check(
        faces,
        [[37.5, 20, 62.5, 40], [115, 15, 135, 35]],
        scores,
        FACE,
        [to_image(FACE_A_LANDMARKS), to_image(FACE_B_LANDMARKS)],
    )
    assert np.isnan(faces.landmarks[0, 3]).all() and not np.isnan(faces.landmarks[0, [0, 1, 2, 4]]).any()


def test_yolo_face_rejects_an_unknown_layout(tmp_path):
    spec, path = make_model(tmp_path, "yolo_face", "face", input_size=YOLO_INPUT)
    write_constant_model(path, "images", [1, 3, 64, 64], {"output0": np.zeros((1, CANDIDATES, 16), np.float32)})
    with pytest.raises(ValueError, match="neither"):
        load_model(spec, tmp_path).detect(YOLO_IMAGE)


# ---------------------------------------------------------------------------------------- YOLO person

def test_yolov8_person_keeps_only_people(tmp_path):
    spec, path = make_model(
        tmp_path, "yolo_person", "person", input_size=YOLO_INPUT, std=(255.0,) * 3, score_threshold=0.3
    )
    rows = np.zeros((CANDIDATES, 4 + 3), np.float32)  # box, then person, car, dog scores
    rows[2] = [20, 12, 10, 16, 0.9, 0, 0]
    rows[5] = [20.5, 12, 10, 16, 0.85, 0, 0]  # duplicate of row 2
    rows[8] = [40, 12, 10, 10, 0.05, 0.95, 0]  # a confident car
    rows[10] = [50, 20, 10, 10, 0.2, 0, 0]  # below 0.3
    write_constant_model(path, "images", [1, 3, 64, 64], {"output0": rows.T[None].copy()})

    people = load_model(spec, tmp_path).detect(YOLO_IMAGE)

    check(people, [[37.5, 10, 62.5, 50]], [0.9], PERSON)  # (15, 4, 25, 20) network


def test_yolox_person_decodes_the_grid(tmp_path):
    spec, path = make_model(tmp_path, "yolo_person", "person", input_size=YOLO_INPUT, color="bgr", score_threshold=0.3)
    # 64x64 input: 8x8 cells of stride 8 (rows 0-63), 4x4 of stride 16 (64-79), 2x2 of stride 32 (80-83).
    rows = np.zeros((84, 5 + 3), np.float32)  # x, y offsets in the cell, log w, log h, objectness, classes
    rows[64 + 1] = [0.5, 0.5, np.log(2), 0, 0.9, 0.9, 0, 0]  # stride 16, cell (1, 0)
    rows[1 * 8 + 5] = [0, 0, 0, 0, 0.8, 0.8, 0, 0]  # stride 8, cell (5, 1)
    rows[1 * 8 + 6] = [-0.9, 0, 0, 0, 0.8, 0.7, 0, 0]  # stride 8, cell (6, 1): duplicate of the previous
    rows[80] = [0, 0, 0, 0, 0.9, 0.1, 0.9, 0]  # a car
    rows[7 * 8] = [0, 0, 0, 0, 0.9, 0.3, 0, 0]  # 0.27, below 0.3
    write_constant_model(path, "images", [1, 3, 64, 64], {"output": rows[None]})

    people = load_model(spec, tmp_path).detect(YOLO_IMAGE)

    # stride 16 cell (1, 0): centre (1.5 * 16, 0.5 * 16) = (24, 8), size (32, 16) -> (8, 0, 40, 16) network.
    # stride 8 cell (5, 1): centre (40, 8), size (8, 8) -> (36, 4, 44, 12) network.
    check(people, [[20, 0, 100, 40], [90, 10, 110, 30]], [0.81, 0.64], PERSON)


# -------------------------------------------------------------------------------------------- RT-DETR

# Queries as fractions of the image, (label, score, x1, y1, x2, y2); 160x80 image -> x * 160, y * 80.
RTDETR_QUERIES = [
    (0, 0.9, 0.25, 0.25, 0.5, 0.75),  # -> (40, 20, 80, 60)
    (0, 0.85, 0.26, 0.25, 0.5, 0.75),  # its duplicate
    (2, 0.95, 0.6, 0.1, 0.9, 0.5),  # not a person
    (0, 0.2, 0.1, 0.1, 0.2, 0.2),  # below 0.5
    (0, 0.6, 0.6, 0.1, 0.9, 0.9),  # -> (96, 8, 144, 72)
    (0, 0.0, 0.0, 0.0, 0.0, 0.0),
]
RTDETR_PEOPLE = [[40, 20, 80, 60], [96, 8, 144, 72]], [0.9, 0.6]


def test_rtdetr_labels_boxes_scores_export(tmp_path):
    """The lyuwenyu export: boxes come out scaled by the orig_target_sizes input (width, height)."""
    spec, path = make_model(tmp_path, "rtdetr", "person", input_size=YOLO_INPUT, std=(255.0,) * 3, score_threshold=0.5)
    queries = np.array(RTDETR_QUERIES, np.float32)
    nodes, outputs = constant_outputs(
        {"labels": queries[None, :, 0].astype(np.int64), "scores": queries[None, :, 1].copy()}
    )
    relative_boxes = numpy_helper.from_array(queries[None, :, 2:].copy())
    nodes += [
        helper.make_node("Constant", [], ["relative_boxes"], value=relative_boxes),
        helper.make_node("Constant", [], ["axis"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Cast", ["orig_target_sizes"], ["sizes"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["sizes", "sizes"], ["sizes_xyxy"], axis=1),
        helper.make_node("Unsqueeze", ["sizes_xyxy", "axis"], ["scale"]),
        helper.make_node("Mul", ["relative_boxes", "scale"], ["boxes"]),
    ]
    outputs.insert(1, ("boxes", TensorProto.FLOAT, [1, len(queries), 4]))
    inputs = [("images", TensorProto.FLOAT, [1, 3, 64, 64]), ("orig_target_sizes", TensorProto.INT64, [1, 2])]
    write_model(path, inputs, outputs, nodes)

    check(load_model(spec, tmp_path).detect(YOLO_IMAGE), *RTDETR_PEOPLE, PERSON)


def test_rtdetr_ultralytics_export(tmp_path):
    """The ultralytics export: one (1, K, 4 + classes) output, boxes as normalised centre and size."""
    spec, path = make_model(tmp_path, "rtdetr", "person", input_size=YOLO_INPUT, std=(255.0,) * 3, score_threshold=0.5)
    rows = []
    for label, score, x1, y1, x2, y2 in RTDETR_QUERIES:
        class_scores = [0.0, 0.0, 0.0]
        class_scores[label] = score
        rows.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] + class_scores)
    write_constant_model(path, "images", [1, 3, 64, 64], {"output0": np.array([rows], np.float32)})

    check(load_model(spec, tmp_path).detect(YOLO_IMAGE), *RTDETR_PEOPLE, PERSON)


# -------------------------------------------------------------------------------------------- ArcFace

DIM = 16
PROJECTION = np.random.default_rng(0).standard_normal((3 * 112 * 112, DIM)).astype(np.float32)
# A smooth random texture (so resampling barely changes it) standing in for faces.
TEXTURES = [
    cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, (240, 320, 3)).astype(np.uint8), (0, 0), 3)
    for seed in (1, 2)
]
CORNER = np.array([40.0, 30.0])  # where the 112x112 chip sits in the image when aligned
LANDMARKS = ARCFACE_TEMPLATE_112 + CORNER


def write_linear_descriptor(path, batch="N"):
    """descriptor = flatten(chip) @ PROJECTION, so it depends on every pixel of the aligned chip."""
    nodes = [
        helper.make_node("Flatten", ["input.1"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["embedding"]),
    ]
    write_model(
        path,
        [("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [("embedding", TensorProto.FLOAT, [batch, DIM])],
        nodes,
        [numpy_helper.from_array(PROJECTION, "projection")],
    )


def arcface(tmp_path, color="rgb", batch="N", flip=False):
    tmp_path.mkdir(exist_ok=True)
    spec, path = make_model(
        tmp_path, "arcface", "descriptor", input_size=(112, 112), mean=(127.5,) * 3, std=(127.5,) * 3,
        color=color, options={"flip": flip},
    )
    write_linear_descriptor(path, batch)
    return load_model(spec, tmp_path)


def faces_at(landmarks, boxes=None) -> Detections:
    landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    if boxes is None:
        boxes = np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
    return Detections(boxes, np.ones(len(landmarks)), FACE, landmarks)


def cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_arcface_describes_the_aligned_chip(tmp_path, color):
    model = arcface(tmp_path, color)
    assert model.dim == DIM
    image = TEXTURES[0]

    descriptor = model.embed(image, faces_at(LANDMARKS))

    # Landmarks on the template shifted by CORNER: the aligned chip is exactly the 112x112 crop there.
    chip = image[30:142, 40:152].astype(np.float32)
    if color == "bgr":
        chip = chip[..., ::-1]
    expected = ((chip - 127.5) / 127.5).transpose(2, 0, 1).reshape(1, -1) @ PROJECTION
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(descriptor, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(descriptor, axis=1), 1.0, atol=1e-6)


def test_arcface_undoes_the_face_pose(tmp_path):
    """The same face, rotated a quarter turn with its landmarks, gets the same descriptor."""
    model = arcface(tmp_path)
    image = TEXTURES[0]
    rotated = np.ascontiguousarray(np.rot90(image))  # counter-clockwise: (x, y) -> (y, width - 1 - x)
    rotated_landmarks = np.stack([LANDMARKS[:, 1], image.shape[1] - 1 - LANDMARKS[:, 0]], axis=1)

    upright = model.embed(image, faces_at(LANDMARKS))[0]
    turned = model.embed(rotated, faces_at(rotated_landmarks))[0]

    assert cosine(upright, turned) > 0.999
    unaligned = model.embed(rotated, faces_at(LANDMARKS))[0]  # wrong landmarks: a different chip
    assert cosine(upright, unaligned) < 0.9


@pytest.mark.parametrize("batch", ["N", 1], ids=["dynamic_batch", "batch_of_one"])
def test_arcface_same_face_same_descriptor(tmp_path, batch):
    model = arcface(tmp_path, batch=batch)
    image = np.zeros((400, 700, 3), np.uint8)
    image[:240, :320] = TEXTURES[0]
    image[:240, 340:660] = TEXTURES[0]  # the same face again, 340 px to the right
    other = TEXTURES[1]

    descriptors = model.embed(image, faces_at([LANDMARKS, LANDMARKS + [340, 0]]))
    stranger = model.embed(other, faces_at(LANDMARKS))[0]

    assert descriptors.shape == (2, DIM)
    np.testing.assert_allclose(descriptors[0], descriptors[1], atol=1e-5)
    assert cosine(descriptors[0], stranger) < 0.9
    assert model.embed(image, Detections.empty()).shape == (0, DIM)


def test_arcface_aligns_faces_without_landmarks_from_their_box(tmp_path):
    """A face without all five landmarks is aligned on the box-relative template's points."""
    model = arcface(tmp_path)
    box = np.array([60.0, 40.0, 160.0, 173.0])  # taller than wide, like detector boxes
    box_only = Detections(box[None], [1.0], FACE)  # landmarks unknown (NaN)
    partial = faces_at(LANDMARKS, box[None])
    partial.landmarks[0, 2] = NAN  # nose missing: the box decides, not the four known points

    from_box = model.embed(TEXTURES[0], Detections.concat([box_only, partial]))

    template_points = box[:2] + BOX_TEMPLATE * (box[2:] - box[:2])
    expected = model.embed(TEXTURES[0], faces_at(template_points))[0]
    np.testing.assert_allclose(from_box[0], expected, atol=1e-5)
    np.testing.assert_allclose(from_box[1], expected, atol=1e-5)
    assert cosine(expected, model.embed(TEXTURES[0], faces_at(LANDMARKS))[0]) < 0.9


def test_arcface_flip_averaging_adds_the_mirrored_chip(tmp_path):
    image = TEXTURES[0]
    plain = arcface(tmp_path / "plain").embed(image, faces_at(LANDMARKS))[0]
    averaged = arcface(tmp_path / "flip", flip=True).embed(image, faces_at(LANDMARKS))[0]

    chip = (image[30:142, 40:152].astype(np.float32) - 127.5) / 127.5
    describe = lambda pixels: pixels.transpose(2, 0, 1).reshape(-1) @ PROJECTION  # noqa: E731
    expected = describe(chip) + describe(chip[:, ::-1])  # the chip and its mirror image
    np.testing.assert_allclose(averaged, expected / np.linalg.norm(expected), atol=1e-4)
    assert cosine(averaged, plain) < 0.9
