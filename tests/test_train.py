"""apclip-train on the generated dataset: it learns, resumes exactly, skips bad videos, and its best.pt
exports to a bundle whose apclip-eval accuracy equals the checkpoint's (CPU, tiny preset)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apclip.train.config import TrainConfig, preset_values  # noqa: E402
from train_helpers import one_intra_op_thread  # noqa: E402,F401  (autouse: one torch thread)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from apclip.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class={"train": 20, "val": 4, "test": 4})


def tiny_config(data, **overrides) -> TrainConfig:
    values = preset_values("tiny")
    values.update(train_list=str(data.lists["train"]), root=str(data.root), labels=str(data.labels),
                  prompts=str(data.bank), workers=0, log_every=1, preset="tiny")
    values.update(overrides)
    return TrainConfig(**values)


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """4 epochs of the tiny preset with validation."""
    from apclip.train.loop import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(dataset, val_list=str(dataset.lists["val"]), epochs=4)
    return train(cfg, run, progress=False, log=_quiet)


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_tiny_model_learns_the_synthetic_classes(trained):
    # 4 classes: chance is 25%. Measured: 100% validation top-1 after 3-4 epochs (40 updates).
    assert trained.best_top1 is not None and trained.best_top1 >= 75.0
    epochs = _records(trained.run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.3  # from about ln 4 = 1.39 towards the smoothing floor
    updates = _records(trained.run, "update")
    assert len(updates) == trained.updates == 40
    for key in ("loss", "lr", "train_top1", "clips_per_s", "memory_mb"):
        assert all(np.isfinite(u[key]) for u in updates), key
    lrs = [u["lr"] for u in updates]
    # Linear warm-up over epoch 1 (10 updates, from 0), then timm's unshifted cosine to the floor lr / 10.
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-4) and lrs[9] == pytest.approx(9e-4)
    assert lrs[-1] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + np.cos(np.pi * 39 / 40)))
    config = json.loads((trained.run / "config.json").read_text())
    assert config["config"]["lr"] == 1e-3 and config["derived"]["train_videos"] == 80
    assert config["derived"]["effective_batch"] == 8


def test_best_checkpoint_is_apclips_format(trained, dataset):
    from apclip.checkpoint import load_checkpoint
    from apclip.prompt_bank import load_prompt_bank

    ckpt = load_checkpoint(trained.run / "best.pt")
    assert ckpt.format == "apclip"
    assert ckpt.labels == dataset.labels.read_text().split("\n")[:4]
    assert ckpt.preprocessing == {"profile": "apclip", "normalize": "clip", "frames": 4, "clips": 1, "crops": 1}
    assert ckpt.prompt_bank_sha256 == load_prompt_bank(dataset.bank).sha256
    assert ckpt.train_config["val_top1"] == trained.best_top1 and ckpt.train_config["preset"] == "tiny"


def test_exported_bundle_and_checkpoint_agree_in_apclip_eval(trained, dataset, tmp_path, capsys):
    from apclip.export.api import export_bundle
    from apclip.train.eval_cli import main

    bundle = tmp_path / "bundle"
    export_bundle(trained.run / "best.pt", out=bundle, prompts=dataset.bank, progress=False, log=_quiet)
    common = ["--list", str(dataset.lists["val"]), "--root", str(dataset.root), "--labels", str(dataset.labels),
              "--prompts", str(dataset.bank), "--no-progress"]
    assert main(["--bundle", str(bundle), "--json", str(tmp_path / "b.json"),
                 "--confusion", str(tmp_path / "cm.png")] + common) == 0
    assert main(["--ckpt", str(trained.run / "best.pt"), "--workers", "0", "--json", str(tmp_path / "c.json")]
                + common) == 0
    by_bundle = json.loads((tmp_path / "b.json").read_text())
    by_ckpt = json.loads((tmp_path / "c.json").read_text())
    assert by_bundle["source"]["backend"] == "ort-cpu" and by_ckpt["source"]["backend"] == "torch-cpu"
    assert by_bundle["top1"] == by_ckpt["top1"] == trained.best_top1  # validation scored best.pt the same way
    for a, b in zip(by_bundle["predictions"], by_ckpt["predictions"]):
        assert a["video"] == b["video"] and a["predicted"] == b["predicted"]
        assert np.allclose([t["score"] for t in a["top"]], [t["score"] for t in b["top"]], atol=1e-4)
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1" in capsys.readouterr().out


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_resume_after_ctrl_c_reaches_the_same_weights(dataset, tmp_path):
    from apclip.train.loop import train

    # Few-shot draw, accumulation, mixup/cutmix and prompt subsets all take part in the exactness.
    cfg = tiny_config(dataset, epochs=2, shots=8, batch_size=4, accumulation=2, mixup=0.8, prompts_per_class=2,
                      log_every=100)
    whole = train(cfg, tmp_path / "whole", progress=False, log=_quiet)
    assert whole.updates == 8 and not whole.interrupted

    def ctrl_c(update: int) -> None:
        if update == 3:  # inside the first epoch (4 updates each)
            raise KeyboardInterrupt

    part = train(cfg, tmp_path / "part", progress=False, log=_quiet, on_update=ctrl_c)
    assert part.interrupted and part.updates == 3
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"], state["update"]) == (0, 6, 3)
    resumed = train(TrainConfig(), tmp_path / "part", resume=True, progress=False, log=_quiet)
    assert resumed.updates == 8 and resumed.epochs == 2
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    moved = max(float((a[k] - torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["state_dict"][k]).abs().max())
                for k in a)
    assert moved == 0.0  # without --val, best.pt is the last epoch's weights


def test_corrupt_videos_are_skipped_and_counted(dataset, tmp_path):
    from apclip.train.loop import train

    for name in ("corrupt.avi", "corrupt2.avi"):
        (tmp_path / name).write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 50)
    lines = dataset.lists["train"].read_text().splitlines()
    base = [line for line in lines if line.endswith((" 0", " 1", " 2"))][:6]
    listing = tmp_path / "train.txt"
    listing.write_text("\n".join(base + [f"{tmp_path / 'corrupt.avi'} 1", f"{tmp_path / 'corrupt2.avi'} 2"]) + "\n")
    classes = tmp_path / "base.txt"
    classes.write_text("rolling red ball\nsliding green box\n2\n")  # names or ids
    # Decoded inline: a DataLoader worker forked from this test process (which earlier tests filled with
    # thread pools) can deadlock; test_ctrl_c_on_the_console_script... counts a bad video across workers.
    cfg = tiny_config(dataset, train_list=str(listing), base_classes=str(classes), epochs=1, batch_size=4)
    result = train(cfg, tmp_path / "run", progress=False, log=_quiet)
    assert result.skipped_videos == 2 and result.updates == 2
    epoch = _records(tmp_path / "run", "epoch")[0]
    assert epoch["skipped_videos"] == 2
    assert sorted(Path(p).name for p in epoch["skipped_paths"]) == ["corrupt.avi", "corrupt2.avi"]
    derived = json.loads((tmp_path / "run" / "config.json").read_text())["derived"]
    assert derived["labels"] == ["rolling red ball", "sliding green box", "gliding blue kite"]


def test_cli_train_errors_and_resume_rules(dataset, tmp_path, capsys):
    from apclip.train.cli import main

    common = ["--labels", str(dataset.labels), "--root", str(dataset.root), "--preset", "tiny", "--no-progress"]
    assert main(["--output", str(tmp_path / "a"), "--train", str(tmp_path / "nope.txt")] + common) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"apclip-train: error: list file {tmp_path / 'nope.txt'} does not exist"]
    assert main(["--output", str(tmp_path / "b"), "--resume"]) == 1
    assert "is not a training run" in capsys.readouterr().err
    assert main(["--output", str(tmp_path / "b"), "--resume", "--lr", "1"]) == 1  # still no run to resume
    assert "is not a training run" in capsys.readouterr().err
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("videos/a.avi 7\n")
    assert main(["--output", str(tmp_path / "c"), "--train", str(bad_list)] + common) == 1
    assert "label id 7 is outside the 4 labels" in capsys.readouterr().err
    foreign = tmp_path / "d"
    foreign.mkdir()
    (foreign / "best.pt").write_bytes(b"a model this run did not write")
    assert main(["--output", str(foreign), "--train", str(dataset.lists["train"])] + common) == 1
    assert "best.pt without a run config" in capsys.readouterr().err
    assert (foreign / "best.pt").read_bytes() == b"a model this run did not write"


@pytest.mark.slow
def test_torchrun_ddp_two_processes_on_cpu(dataset, tmp_path):
    """torchrun + DistributedDataParallel (gloo on CPU): rank 0 validates and writes, the run completes."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    run = tmp_path / "ddp"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29531",
           "-m", "apclip.train.cli", "--output", str(run), "--preset", "tiny", "--epochs", "1",
           "--train", str(dataset.lists["train"]), "--val", str(dataset.lists["val"]), "--root", str(dataset.root),
           "--labels", str(dataset.labels), "--prompts", str(dataset.bank), "--workers", "0", "--batch-size", "4",
           "--accumulation", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained 1 epochs") == 1  # only rank 0 reports
    derived = json.loads((run / "config.json").read_text())["derived"]
    assert derived["world_size"] == 2 and derived["effective_batch"] == 16
    assert derived["updates_per_epoch"] == 5  # 80 videos / 2 ranks / batch 4 / accumulation 2
    assert len(_records(run, "epoch")) == 1 and (run / "best.pt").is_file()


@pytest.mark.slow
def test_ctrl_c_on_the_console_script_leaves_a_resumable_run(dataset, tmp_path):
    """A real SIGINT (decoding in a worker process): exit 130, last.pt at an update, --resume finishes; a
    corrupt video in the list is skipped and counted across the worker boundary."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    script = shutil.which("apclip-train", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("apclip-train is not installed next to this Python")
    run = tmp_path / "run"
    (tmp_path / "corrupt.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 50)
    listing = tmp_path / "train.txt"
    lines = dataset.lists["train"].read_text().splitlines()[:79] + [f"{tmp_path / 'corrupt.avi'} 0"]
    listing.write_text("\n".join(lines) + "\n")
    cmd = [script, "--output", str(run), "--preset", "tiny", "--epochs", "2", "--train", str(listing),
           "--root", str(dataset.root), "--labels", str(dataset.labels), "--workers", "1", "--log-every", "1",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):  # three updates done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["update"] >= 3 and state["batches_done"] == state["update"] % 10
    done = subprocess.run([script, "--output", str(run), "--resume", "--no-progress"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 2 epochs (20 updates)" in done.stdout and "skipped videos 1" in done.stdout
    assert _records(run, "epoch")[-1]["skipped_videos"] == 1


def test_fine_tuning_an_openai_checkpoint_keeps_its_clip_profile(dataset, tmp_path):
    from apclip.checkpoint import load_checkpoint
    from apclip.model import build_preset
    from apclip.train.loop import train

    init = tmp_path / "openai.pt"
    torch.save(build_preset("tiny", seed=3).state_dict(), init)  # a plain OpenAI-layout state_dict
    cfg = tiny_config(dataset, model_preset=None, init=str(init), epochs=1, shots=4, batch_size=4)
    result = train(cfg, tmp_path / "run", progress=False, log=_quiet)
    assert result.updates == 4
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.preprocessing["profile"] == "clip" and best.preprocessing["normalize"] == "clip"
    start = build_preset("tiny", seed=3).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in best.model.state_dict().items())  # it was trained
