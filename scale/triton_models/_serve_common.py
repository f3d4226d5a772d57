"""Shared by apclip-serve's Python-backend models (copied next to each model.py as serve_common.py).

The stub's interpreter starts from its base prefix: the server environment's site-packages are added
as site dirs first, so that .pth files (an editable apclip install) work too.
"""
import hashlib
import json
import os
import site

for _folder in filter(None, os.environ.get("APCLIP_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_folder)


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
