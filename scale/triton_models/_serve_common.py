"""Helpers shared by apclip-serve's Python-backend models (clip.py, labels.py)."""
import hashlib
import json
import os


def parameters(args):
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def label_set_id(labels):
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def label_set_path(state_dir, set_id):
    return os.path.join(state_dir, "label_sets", f"{set_id}.json")


def load_bank(params):
    if not params.get("prompts"):
        return None
    from apclip.prompt_bank import load_prompt_bank

    return load_prompt_bank(params["prompts"])


def decode_strings(array):
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]


def request_error(pb_utils, message):
    """A client error (HTTP 400 / gRPC INVALID_ARGUMENT), not an internal one."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)
