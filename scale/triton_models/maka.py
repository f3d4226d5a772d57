"""Triton Python-backend model `maka`: frame embeddings of one clip -> MAKA scores of every class.

Self-contained (numpy only), so it runs in NVIDIA's tritonserver containers without apclip. The class
matrix sits next to this file: class_embeddings.npy [K, P, E] (L2-normalised rows, zero padding),
class_counts.npy [K] and labels.json. MAKA (AP-CLIP eq. 3-6), with v the Nv frame embeddings and c
the P_k real prompt rows of class k:
    score_k = 1/2 * ( mean_i max_j v_i.c_j  +  mean_j max_i v_i.c_j )
"""
import json
import os

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def maka(frames, classes, counts):
    """[Nv, E] x [K, P, E] (+ counts [K]) -> [K] float32."""
    sim = np.einsum("ne,kpe->knp", frames.astype(np.float32), classes)  # [K, Nv, P]
    real = np.arange(classes.shape[1])[None, :] < counts[:, None]  # [K, P]
    best_prompt = np.where(real[:, None, :], sim, -np.inf).max(axis=2).mean(axis=1)  # [K]
    best_frame = np.where(real, sim.max(axis=1), 0.0).sum(axis=1) / counts  # [K]
    return (0.5 * (best_prompt + best_frame)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        self.classes = np.load(os.path.join(here, "class_embeddings.npy")).astype(np.float32)
        self.counts = np.load(os.path.join(here, "class_counts.npy")).astype(np.int64)
        with open(os.path.join(here, "labels.json"), encoding="utf-8") as f:
            self.labels = np.array([label.encode("utf-8") for label in json.load(f)], dtype=np.object_)
        params = json.loads(args["model_config"]).get("parameters", {})
        self.topk = min(int(params.get("topk", {}).get("string_value", "5")), len(self.labels))

    def execute(self, requests):
        responses = []
        for request in requests:
            frames = pb_utils.get_input_tensor_by_name(request, "embeddings").as_numpy()  # [Nv, E]
            if frames.ndim == 3:  # a clip-level vision model's [V, T, E]: all frames of all views, one set
                frames = frames.reshape(-1, frames.shape[-1])
            if frames.ndim != 2 or frames.shape[0] == 0 or frames.shape[1] != self.classes.shape[2]:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"embeddings must be [Nv >= 1, {self.classes.shape[2]}], got {list(frames.shape)}")))
                continue
            scores = maka(frames, self.classes, self.counts)
            order = np.argsort(-scores, kind="stable")[:self.topk]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("labels", self.labels[order]),
                pb_utils.Tensor("scores", scores[order]),
                pb_utils.Tensor("all_scores", scores),
            ]))
        return responses
