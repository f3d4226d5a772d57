"""apclip-train never reports success on nothing: a wrong --root fails before any work, too many
undecodable videos stop the run, an epoch that learned nothing writes no best.pt; a small few-shot
dataset runs with the accumulation lowered (and says so); --resume accepts the first command again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from apclip.train.config import TrainConfig, preset_values  # noqa: E402
from train_helpers import one_intra_op_thread  # noqa: E402,F401  (autouse: one torch thread)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from apclip.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class={"train": 6, "val": 2, "test": 1})


def _config(data, **overrides) -> TrainConfig:
    values = preset_values("tiny")
    values.update(train_list=str(data.lists["train"]), root=str(data.root), labels=str(data.labels), workers=0,
                  log_every=1, preset="tiny", epochs=1)
    values.update(overrides)
    return TrainConfig(**values)


def _quiet(message: str) -> None:
    pass


def _cli(dataset, run: Path, *extra: str) -> list[str]:
    return ["--output", str(run), "--preset", "tiny", "--epochs", "1", "--train", str(dataset.lists["train"]),
            "--root", str(dataset.root), "--labels", str(dataset.labels), "--workers", "0", "--no-progress", *extra]


def test_wrong_root_fails_before_any_work(dataset, tmp_path, capsys):
    from apclip.train.cli import main

    run = tmp_path / "run"
    code = main(_cli(dataset, run)[:-1] + ["--root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("apclip-train: error: ") and "do not exist under --root" in err[0]
    assert not (run / "best.pt").exists() and not (run / "config.json").exists()


def test_undecodable_first_videos_fail_before_any_work(dataset, tmp_path):
    from apclip.train.data import DataError
    from apclip.train.loop import train

    for i in range(3):
        (tmp_path / f"bad{i}.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 50)
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"bad{i}.avi 0\n" for i in range(3)) + "\n".join(
        f"{dataset.root / line}" for line in dataset.lists["train"].read_text().splitlines()) + "\n")
    with pytest.raises(DataError, match="none of the first 3 videos"):
        train(_config(dataset, train_list=str(listing), root=str(tmp_path)), tmp_path / "run", progress=False,
              log=_quiet)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_too_many_failing_videos_stop_the_run(dataset, tmp_path):
    from apclip.train.data import DataError
    from apclip.train.loop import train

    good = dataset.lists["train"].read_text().splitlines()
    lines = [f"{dataset.root / line}" for line in good[:12]]
    for i in range(6):  # a third of the list, after good ones (the pre-flight decodes the first three)
        (tmp_path / f"bad{i}.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 50)
        lines.append(f"{tmp_path / f'bad{i}.avi'} 1")
    listing = tmp_path / "train.txt"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="--max-skipped 0.1"):
        train(_config(dataset, train_list=str(listing), root="/", max_skipped=0.1, batch_size=6),
              tmp_path / "run", progress=False, log=_quiet)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_an_epoch_that_learned_nothing_writes_no_best(dataset, tmp_path, monkeypatch):
    from apclip.engine.video.errors import SourceError
    from apclip.train import data
    from apclip.train.loop import train

    def fail(path, *args, **kwargs):
        raise SourceError(f"cannot decode {path}")

    monkeypatch.setattr(data, "decode_train_frames", fail)  # the pre-flight passes; every training clip fails
    with pytest.raises(data.DataError, match="trained on no video"):
        train(_config(dataset, max_skipped=1.0), tmp_path / "run", progress=False, log=_quiet)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_few_shot_dataset_lowers_the_accumulation_and_says_so(dataset, tmp_path):
    from apclip.train.loop import train

    notes: list[str] = []
    # 2 shots x 4 classes = 8 videos against batch 8 x accumulation 8: today's refusal.
    result = train(_config(dataset, shots=2, batch_size=8, accumulation=8), tmp_path / "run", progress=False,
                   log=notes.append)
    assert result.updates == 1 and (tmp_path / "run" / "best.pt").is_file()
    said = [n for n in notes if n.startswith("note: ")]
    assert len(said) == 1 and "accumulation 1" in said[0], notes
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["accumulation"] == 8  # what was asked, kept for --resume
    assert saved["derived"]["accumulation"] == 1 and saved["derived"]["notes"] == [said[0][len("note: "):]]


def test_resume_accepts_the_first_command_and_names_what_differs(dataset, tmp_path, capsys):
    from apclip.train.cli import main

    run = tmp_path / "run"
    argv = _cli(dataset, run, "--batch-size", "4", "--accumulation", "2")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0  # the habit of mmaction2 and Lightning users
    assert "trained 1 epochs" in capsys.readouterr().out
    changed = [a if a != "1" else "3" for a in argv]  # --epochs 3
    assert main(changed + ["--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("apclip-train: error: --resume"), err
    assert "--epochs 3 (the run has 1)" in err[0] and "--lr 0.5" in err[0] and "--batch-size" not in err[0]
