"""apclip-serve's `apclip_labels`: register a run-time label set; returns its id for apclip_clip.

input labels [L] (strings) -> outputs label_set [1] (id), classes [1], encoded [1] (labels run through
the text encoder now; 0 when the bundle or the on-disk cache had them all). New labels are encoded
once with text.onnx and cached ($APCLIP_CACHE_DIR); the label list is saved under the server's state
folder, where every apclip_clip instance (its own process) finds it by id.
"""

import json
import os

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from apclip.scale.triton_models import _serve_common as serve_common  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        from apclip.bundle import TEXT_BATCH, TEXT_FILE, TEXT_INPUT, read_manifest
        from apclip.engine.runners.encoders import OrtRunner, file_identity

        self.params = serve_common.parameters(args)
        self.manifest = read_manifest(self.params["bundle"])
        threads = int(self.params.get("threads") or 0) or None
        # the identity apclip_clip's fp32 ONNX Runtime text runner reports: both share the label cache
        self.text = OrtRunner(self.manifest.file(TEXT_FILE), TEXT_INPUT, threads=threads, batch_size=TEXT_BATCH,
                              identity=file_identity(self.manifest, TEXT_FILE, "ort-cpu", "fp32"))
        self.bank = serve_common.load_bank(self.params)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        from apclip.errors import ApclipError
        from apclip.fileio import atomic_write

        from apclip.engine.scoring.vocabulary import resolve_classes

        try:
            labels = [label.strip() for label in serve_common.decode_strings(
                pb_utils.get_input_tensor_by_name(request, "labels").as_numpy())]
            if any(not label for label in labels):
                raise ApclipError("labels must not be empty strings")
            limit = int(self.params.get("max_labels") or 4096)
            if len(labels) > limit or any(len(label) > 1000 for label in labels):
                raise ApclipError(f"send at most {limit} labels of at most 1000 characters (apclip-serve --max-labels)")
            classes, stats = resolve_classes(self.manifest, labels, self.bank, self.text, use_cache=True)
            set_id = serve_common.label_set_id(labels)
            path = serve_common.label_set_path(self.params["state_dir"], set_id)
            if not os.path.exists(path):
                with atomic_write(path, "w") as f:
                    json.dump(labels, f, ensure_ascii=False)
        except (ApclipError, UnicodeDecodeError, ValueError) as exc:
            return serve_common.request_error(pb_utils, " ".join(str(exc).split()))
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("label_set", np.array([set_id.encode()], dtype=np.object_)),
            pb_utils.Tensor("classes", np.array([classes.num_classes], dtype=np.int32)),
            pb_utils.Tensor("encoded", np.array([stats["encoded"]], dtype=np.int32)),
        ])
