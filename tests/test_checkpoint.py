"""Every checkpoint flavour, written here from tiny random weights, loads back to identical outputs;
files that need code to unpickle are refused before anything in them runs."""
from __future__ import annotations

import contextlib
import copy
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

import apclip
from apclip.checkpoint import load_checkpoint, load_model, read_checkpoint_object, save_checkpoint
from apclip.config import ModelConfig
from apclip.errors import CheckpointError
from apclip.model import CLIP, build_model
from checkpoint_layouts import vificlip_keys

TINY = ModelConfig.from_name("tiny")


# ---- weights, inputs and output comparison ------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> CLIP:
    """The tiny preset with every parameter perturbed, so no weight is at its default."""
    torch.manual_seed(0)
    clip = CLIP(TINY).eval()
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return clip


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, TINY.image_resolution, TINY.image_resolution, generator=gen)
    tokens = torch.randint(1, 49000, (3, TINY.context_length), generator=gen)
    tokens[:, 0] = 49406
    for row, eot in enumerate([5, 20, 76]):
        tokens[row, eot] = 49407
        tokens[row, eot + 1:] = 0
    return images, tokens


def outputs(clip: CLIP, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = inputs
    with torch.no_grad():
        return clip.encode_image(images), clip.encode_text(tokens)


def assert_identical(loaded: CLIP, reference: CLIP, inputs) -> None:
    assert loaded.config == reference.config and not loaded.training
    for got, want in zip(outputs(loaded, inputs), outputs(reference, inputs)):
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def trace(clip: torch.nn.Module, inputs) -> torch.jit.ScriptModule:
    return torch.jit.trace(clip, inputs, check_trace=False)


@pytest.fixture(scope="module")
def plain_file(model, files) -> Path:
    path = files / "plain.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torchscript_file(model, inputs, files) -> Path:
    path = files / "ViT-tiny.pt"
    trace(model, inputs).save(str(path))
    return path


@contextlib.contextmanager
def no_torchscript_execution(monkeypatch):
    """Loading must read tensors only: torch.jit.load (which runs the archive's code) is off limits."""
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")
    with monkeypatch.context() as patch:
        patch.setattr(torch.jit, "load", forbidden)
        yield


# ---- OpenAI formats -----------------------------------------------------------------------------

def test_openai_plain_state_dict(model, inputs, plain_file):
    checkpoint = load_checkpoint(plain_file)
    assert checkpoint.format == "openai" and checkpoint.labels is None
    assert checkpoint.preprocessing == {"normalize": "clip", "profile": "clip"}
    assert_identical(checkpoint.model, model, inputs)
    assert_identical(apclip.load_model(plain_file), model, inputs)


def test_openai_state_dict_variants(model, inputs, files):
    """Legacy (non-zip) serialisation, a {"state_dict": ...} wrapper, and OpenAI's int extras."""
    extras = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    legacy, wrapped = files / "legacy.pt", files / "wrapped.pth"
    torch.save(dict(model.state_dict(), **extras), legacy, _use_new_zipfile_serialization=False)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, wrapped)
    for path in (legacy, wrapped):
        assert_identical(load_model(path), model, inputs)


def test_torchscript_archive_is_read_without_running_it(model, inputs, torchscript_file, monkeypatch):
    assert any("/code/" in name for name in zipfile.ZipFile(torchscript_file).namelist())
    with no_torchscript_execution(monkeypatch):
        checkpoint = load_checkpoint(torchscript_file)
    assert checkpoint.format == "openai-torchscript"
    assert_identical(checkpoint.model, model, inputs)
    # And it agrees with running the archive itself (our own file, so running it is safe here).
    scripted_image_logits, _ = torch.jit.load(str(torchscript_file))(*inputs)
    loaded_image_logits, _ = checkpoint.model(*inputs)
    torch.testing.assert_close(loaded_image_logits, scripted_image_logits, rtol=1e-5, atol=1e-5)


def test_fp16_torchscript_archive(model, inputs, files, monkeypatch):
    """OpenAI released fp16 archives; they load as float32 holding exactly the fp16 values."""
    path = files / "fp16.pt"
    trace(copy.deepcopy(model), inputs).half().save(str(path))  # a traced module shares its parameters
    with no_torchscript_execution(monkeypatch):
        loaded = load_model(path)
    half_weights = {k: v.half() for k, v in model.state_dict().items()}
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, half_weights[key].float()), key
    assert_identical(loaded, build_model(half_weights), inputs)
    image, _ = outputs(loaded, inputs)
    torch.testing.assert_close(image, outputs(model, inputs)[0], rtol=2e-2, atol=2e-2)


class OpenAIArchiveShape(torch.nn.Module):
    """CLIP plus the non-parameter tensors OpenAI's archives carry (input_resolution, context_length,
    vocab_size, attention masks), so the archive's tensor set is a superset of the state_dict."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.visual, self.transformer = clip.visual, clip.transformer
        self.token_embedding, self.positional_embedding = clip.token_embedding, clip.positional_embedding
        self.ln_final, self.text_projection, self.logit_scale = clip.ln_final, clip.text_projection, clip.logit_scale
        self.register_buffer("input_resolution", torch.tensor(clip.config.image_resolution))
        self.register_buffer("context_length", torch.tensor(clip.config.context_length))
        self.register_buffer("vocab_size", torch.tensor(clip.config.vocab_size))
        mask = torch.full((clip.config.context_length,) * 2, float("-inf")).triu(1)
        self.transformer.register_buffer("attn_mask", mask)
        for block in self.transformer.resblocks:
            block.register_buffer("attn_mask", mask)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def test_torchscript_archive_with_openai_extras(model, inputs, files, monkeypatch):
    clip = CLIP(TINY).eval()
    clip.load_state_dict(model.state_dict())
    wrapper = OpenAIArchiveShape(clip)
    path = files / "with_extras.pt"
    scripted = trace(wrapper, inputs[:1])
    assert {"vocab_size", "transformer.resblocks.1.attn_mask"} <= set(scripted.state_dict())
    scripted.save(str(path))
    with no_torchscript_execution(monkeypatch):
        loaded = load_model(path)
    assert_identical(loaded, model, inputs)


# ---- ViFi-CLIP ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vificlip_file(model, files) -> Path:
    path = files / "vificlip.pth"
    torch.save({"model": vificlip_keys(model.state_dict()), "epoch": 11, "max_accuracy": 71.5,
                "optimizer": {"state": {}, "param_groups": [{"lr": 2e-6, "params": [0, 1]}]}}, path)
    return path


@pytest.mark.parametrize("base", ["plain", "torchscript"])
def test_vificlip_with_base(model, inputs, vificlip_file, plain_file, torchscript_file, base, monkeypatch):
    base_path = plain_file if base == "plain" else torchscript_file
    with no_torchscript_execution(monkeypatch):
        checkpoint = load_checkpoint(vificlip_file, base=base_path)
    assert checkpoint.format == "vificlip"
    assert checkpoint.preprocessing == {"normalize": "imagenet255", "profile": "vificlip"}
    assert_identical(checkpoint.model, model, inputs)


def test_vificlip_without_base_says_what_to_pass(vificlip_file):
    with pytest.raises(CheckpointError, match=r"vificlip\.pth has no token_embedding\.weight.*--base") as info:
        load_checkpoint(vificlip_file)
    assert "\n" not in str(info.value)


def test_vificlip_with_unusable_base(vificlip_file, files):
    with pytest.raises(CheckpointError, match=r"base checkpoint .*missing\.pt does not exist"):
        load_checkpoint(vificlip_file, base=files / "missing.pt")
    with pytest.raises(CheckpointError, match=r"base checkpoint .*vificlip\.pth has no token_embedding\.weight"):
        load_checkpoint(vificlip_file, base=vificlip_file)


@contextlib.contextmanager
def fake_yacs():
    """A stand-in `yacs.config.CfgNode` (a dict subclass with instance state, like the real one)."""
    package, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, package.config = CfgNode, config
    saved = {name: sys.modules.get(name) for name in ("yacs", "yacs.config")}
    sys.modules.update({"yacs": package, "yacs.config": config})
    try:
        yield CfgNode
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_vificlip_with_pickled_yacs_config(model, inputs, files, plain_file):
    path = files / "vificlip_cfg.pth"
    with fake_yacs() as CfgNode:
        cfg = CfgNode({"DATA": CfgNode({"NUM_FRAMES": 16, "INPUT_SIZE": 224}),
                       "TRAIN": CfgNode({"LR": 2e-6, "BATCH_SIZE": 4})})
        torch.save({"model": vificlip_keys(model.state_dict()), "config": cfg, "epoch": 29}, path)
    assert "yacs.config" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):  # what the reader has to cope with
        torch.load(path, weights_only=True)
    checkpoint = load_checkpoint(path, base=plain_file)
    assert checkpoint.format == "vificlip"
    assert checkpoint.preprocessing == {"normalize": "imagenet255", "profile": "vificlip", "frames": 16,
                                        "resolution": 224}
    assert checkpoint.template == "a photo of a {}."  # ViFi-CLIP's default CTX_INIT
    assert checkpoint.train_config == {"DATA": {"NUM_FRAMES": 16, "INPUT_SIZE": 224},
                                       "TRAIN": {"LR": 2e-6, "BATCH_SIZE": 4}}
    assert type(checkpoint.train_config["DATA"]) is dict
    assert_identical(checkpoint.model, model, inputs)
    assert "yacs.config" not in sys.modules


# ---- this project's format ----------------------------------------------------------------------

def test_own_format_round_trip(model, inputs, files):
    labels = ["archery", "juggling balls", "tai chi"]
    preprocessing = {"normalize": "imagenet255", "frames": 8, "clips": 2, "crops": 2}
    path = save_checkpoint(files / "run" / "best.pt", model, labels=labels, preprocessing=preprocessing,
                           prompt_bank_sha256="ab" * 32, train_config={"lr": 8e-6, "epochs": 10})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "apclip"
    assert checkpoint.labels == labels and checkpoint.preprocessing == dict(preprocessing, profile="apclip")
    assert checkpoint.prompt_bank_sha256 == "ab" * 32
    assert checkpoint.train_config == {"lr": 8e-6, "epochs": 10}
    assert_identical(checkpoint.model, model, inputs)


def test_own_format_metadata_is_stored_as_plain_data(model, files):
    """A Path or tuple in the training config must not make the checkpoint unloadable (weights_only)."""
    path = save_checkpoint(files / "paths.pt", model, labels=["a"], preprocessing={"size": (224, 224)},
                           train_config={"output": files / "run", "betas": (0.9, 0.98)})
    checkpoint = load_checkpoint(path)
    assert checkpoint.train_config == {"output": str(files / "run"), "betas": [0.9, 0.98]}
    assert checkpoint.preprocessing == {"size": [224, 224], "profile": "apclip"}


def test_own_format_from_a_newer_apclip_is_refused(model, files):
    path = files / "future.pt"
    torch.save({"format": "apclip-checkpoint", "version": 99, "state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="version 99.*upgrade apclip"):
        load_checkpoint(path)


def test_own_format_carries_sizes_shapes_cannot_tell(inputs, files):
    """Text heads are not visible in shapes: 4 heads of 32 survive only because the config travels."""
    config = ModelConfig(**dict(TINY.to_dict(), transformer_heads=4))
    torch.manual_seed(3)
    clip = CLIP(config).eval()
    path = save_checkpoint(files / "heads.pt", clip)
    loaded = load_model(path)
    assert loaded.config.transformer_heads == 4
    assert_identical(loaded, clip, inputs)
    _, text = outputs(build_model(clip.state_dict()), inputs)  # shapes alone infer 2 heads
    assert not torch.allclose(text, outputs(clip, inputs)[1])


# ---- refused and broken files -------------------------------------------------------------------

MARKER_NAME = "payload-ran"


def write_marker(path: str) -> None:
    Path(path).write_text("the checkpoint ran code")


class SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class FunctionPayload(SystemPayload):
    def __reduce__(self):
        return write_marker, (str(self.marker),)


def tampered_torchscript(source: Path, target: Path, payload: object) -> Path:
    """The archive with its data.pkl replaced by `payload` (code/ and constants.pkl kept)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("/data.pkl"):
                data = pickle.dumps({"training": False, "x": payload}, protocol=2)
            zout.writestr(name, data)
    return target


@pytest.mark.parametrize("payload_kind", [SystemPayload, FunctionPayload])
@pytest.mark.parametrize("container", ["zip", "legacy", "torchscript", "yacs"])
def test_code_payload_is_refused_and_never_runs(tmp_path, torchscript_file, model, payload_kind, container):
    marker = tmp_path / MARKER_NAME
    payload = payload_kind(marker)
    path = tmp_path / "evil.pt"
    if container == "zip":
        torch.save({"model": model.state_dict(), "extra": payload}, path)
    elif container == "legacy":
        torch.save({"model": model.state_dict(), "extra": payload}, path, _use_new_zipfile_serialization=False)
    elif container == "torchscript":
        tampered_torchscript(torchscript_file, path, payload)
    else:  # the plain-data class the fallback reader accepts must not open the door to anything else
        with fake_yacs() as CfgNode:
            torch.save({"model": model.state_dict(), "config": CfgNode({"x": payload})}, path)
    with pytest.raises(CheckpointError, match=r"needs code to unpickle \(\S+\) and was refused") as info:
        load_checkpoint(path)
    assert ("system" if payload_kind is SystemPayload else "write_marker") in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("name,content,match", [
    ("garbage.pt", bytes(range(256)) * 20, "not a readable torch file"),
    ("empty.pt", b"", "not a readable torch file"),
    ("text.pt", b"this is a note, not a checkpoint\n", "not a readable torch file"),
    ("fake.zip", b"PK\x03\x04" + b"\x00" * 100, "not a readable torch file"),
])
def test_unreadable_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{name} is {match}") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "needs code" not in str(info.value)


@pytest.mark.parametrize("source", ["plain", "torchscript"])
def test_truncated_files(tmp_path, plain_file, torchscript_file, source):
    data = (plain_file if source == "plain" else torchscript_file).read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"is not a readable torch file \(damaged, truncated"):
            load_checkpoint(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_not_a_clip_checkpoint(tmp_path, model):
    odd = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "notes": ["a", "b"]}, odd)
    with pytest.raises(CheckpointError, match=r"odd\.pt is not a CLIP state_dict.*top-level type dict"):
        load_checkpoint(odd)
    resnet = tmp_path / "resnet.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.ones(1)}, resnet)
    with pytest.raises(CheckpointError, match=r"missing keys \[visual\.conv1\.weight.*only CLIP ViT"):
        load_checkpoint(resnet)


def test_bad_keys_and_shapes_are_named_and_nothing_loads(tmp_path, model):
    sd = dict(model.state_dict())
    del sd["visual.ln_post.weight"]
    sd["visual.head.bias"] = torch.ones(3)
    sd["ln_final.bias"] = torch.ones(5)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "bad.pt does not fit the CLIP model" in message and "\n" not in message
    assert "missing keys [visual.ln_post.weight]" in message
    assert "unexpected keys [visual.head.bias]" in message
    assert "wrong shapes [ln_final.bias: (5,) != (128,)]" in message


def test_read_checkpoint_object_reports_torchscript(torchscript_file, plain_file):
    tensors, scripted = read_checkpoint_object(torchscript_file)
    assert scripted and all(isinstance(v, torch.Tensor) for v in tensors.values())
    obj, scripted = read_checkpoint_object(plain_file)
    assert not scripted and set(obj) == set(tensors)
