"""Triton Python-backend model `vision` running model.onnx with ONNX Runtime (CPU).

For servers without Triton's onnxruntime backend (the one in the nvidia-pytriton wheel has only the
Python backend); NVIDIA's containers use `platform: "onnxruntime_onnx"` with the same inputs and
outputs instead. Requests that the dynamic batcher groups are run as one ONNX Runtime call.
"""
import json
import os

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        params = json.loads(args["model_config"]).get("parameters", {})
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = int(params.get("threads", {}).get("string_value", "0"))
        if threads:
            options.intra_op_num_threads = threads
        here = os.path.dirname(os.path.abspath(__file__))
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # [n_i, 3, R, R] each (clip-level bundles: [n_i, T, 3, R, R])
        pixels = [pb_utils.get_input_tensor_by_name(r, "pixels").as_numpy() for r in requests]
        sizes = [len(p) for p in pixels]
        # All requests' frames in one call: [sum n_i, 3, R, R] -> [sum n_i, E]
        embeddings = self.session.run(["embeddings"], {"pixels": np.concatenate(pixels)})[0]
        bounds = np.cumsum([0] + sizes)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("embeddings", embeddings[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
