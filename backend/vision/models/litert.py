"""Running a .tflite model with LiteRT (the standalone TensorFlow Lite runtime, `ai-edge-litert`).

The MediaPipe detectors ship only as .tflite files; LiteRT runs them without MediaPipe itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class LiteRTModel:
    """One loaded .tflite model with a single input tensor: `model(tensor)` returns its outputs.

    Threads come from ORT_THREADS, the same variable that sizes the ONNX Runtime sessions, so that one
    setting bounds every runtime of the ensemble; unset or 0 leaves LiteRT's own default.
    """

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        if not Path(path).exists():
            raise FileNotFoundError(
                f"model file {path} is missing: run `autoannotator models download` or copy it there by hand"
            )
        threads = int(os.environ.get("ORT_THREADS", "0"))
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        (self._input,) = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"])

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(d) for d in output["shape"]) for output in self._outputs]

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run on one input tensor (already in the model's shape and dtype); outputs in the model's order."""
        self.interpreter.set_tensor(self._input["index"], tensor.astype(self._input["dtype"], copy=False))
        self.interpreter.invoke()
        # get_tensor copies, so the results stay valid after the next call reuses the buffers.
        return [self.interpreter.get_tensor(d["index"]) for d in self._outputs]
