"""Nothing a command writes can destroy an input: every output option of every command, pointed at
every kind of input of that command, is refused (exit 2, one line) and the input keeps its bytes.

Each row names a command, one of its outputs and one of its inputs. The input is made as a file
with the output's suffix (or a folder, for bundles, image folders and dataset roots); the output is
the input itself, or a file inside an input folder. The guard runs before any input is read, so the
inputs hold placeholder bytes, not real models.
"""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

PRECIOUS = b"precious input bytes"


def _bundle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "vision.onnx", "text.onnx", "classes.safetensors"):
        (folder / name).write_bytes(PRECIOUS)
    return folder


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PRECIOUS)
    return path


def _main(module: str):
    return __import__(module, fromlist=["main"]).main


# command -> (module, outputs {flag: suffix}, inputs {flag: kind}, argv builder(tmp, inputs) -> argv without outputs)
# An input kind is "file", "tree" (a folder read whole) or "folder" (paths are relative to it).
def _infer_argv(tmp, given):
    video = given.get("SOURCE") or _file(tmp / "v.mp4")
    argv = [str(video), "--bundle", str(given.get("--bundle") or _bundle(tmp / "b"))]
    if "@list" in given:
        argv = [f"@{given['@list']}", "--bundle", argv[2]]
    if "IMAGES" in given:
        argv = [str(given["IMAGES"]), "--bundle", argv[2]]
    for flag in ("--labels", "--prompts", "--ckpt", "--base", "--bpe-vocab"):
        if flag in given:
            argv += [flag, str(given[flag])]
    return argv


def _eval_argv(tmp, given):
    argv = ["--bundle", str(given.get("--bundle") or _bundle(tmp / "b")),
            "--list", str(given.get("--list") or _file(tmp / "list.txt")),
            "--labels", str(given.get("--labels") or _file(tmp / "labels.txt")), "--no-progress"]
    for flag in ("--root", "--ckpt", "--prompts", "--base", "--base-classes", "--novel-classes", "--bpe-vocab"):
        if flag in given:
            argv += [flag, str(given[flag])]
    return argv


def _bench_argv(tmp, given):
    bundle = str(given.get("BUNDLE") or _bundle(tmp / "b"))
    if "FILES" in given:
        return ["compare", str(given["FILES"]), str(_file(tmp / "other.json"))]
    argv = ["latency", bundle, "--quiet"] if "--video" in given else ["parity", bundle, "--quiet"]
    argv += ["--ckpt", str(given.get("--ckpt") or _file(tmp / "best.pt"))]
    for flag in ("--base", "--video", "--videos"):
        if flag in given:
            argv += [flag, str(given[flag])]
    return argv


def _export_argv(tmp, given):
    argv = ["--ckpt", str(given.get("--ckpt") or _file(tmp / "best.pt")), "--no-progress"]
    for flag in ("--labels", "--prompts", "--base", "--bpe-vocab"):
        if flag in given:
            argv += [flag, str(given[flag])]
    return argv


def _batch_argv(tmp, given):
    argv = [str(given.get("BUNDLE") or _bundle(tmp / "b")), "--input", str(given.get("--input") or _file(tmp / "v.mp4"))]
    for flag in ("--labels", "--prompts"):
        if flag in given:
            argv += [flag, str(given[flag])]
    return argv


def _prompts_argv(sub):
    def build(tmp, given):
        if sub == "generate":
            argv = ["generate", "--labels", str(given.get("--labels") or _file(tmp / "labels.txt")), "--dry-run",
                    "--out", str(tmp / "bank.json")]  # a later --out in the row wins
            for flag in ("--graph", "--bpe-vocab"):
                if flag in given:
                    argv += [flag, str(given[flag])]
            return argv
        if sub == "review":
            return ["review", str(given["BANK"])]
        return ["apply-review", str(_file(tmp / "bank.json")), str(given["CSV"])]
    return build


COMMANDS = {
    "apclip-infer": ("apclip.engine.cli.infer", {"--json": ".jsonl", "--csv": ".csv", "--report": ".html",
                                                 "--out-video": ".mp4"},
                     {"SOURCE": "file", "@list": "file", "IMAGES": "tree", "--bundle": "tree", "--labels": "file",
                      "--prompts": "file", "--ckpt": "file", "--base": "file", "--bpe-vocab": "file"}, _infer_argv),
    "apclip-eval": ("apclip.train.eval_cli", {"--json": ".json", "--confusion": ".png"},
                    {"--bundle": "tree", "--ckpt": "file", "--list": "file", "--root": "folder", "--labels": "file",
                     "--prompts": "file", "--base": "file", "--base-classes": "file", "--novel-classes": "file",
                     "--bpe-vocab": "file"}, _eval_argv),
    "apclip-bench": ("apclip.benchmarks.cli", {"--json": ".json"},
                     {"BUNDLE": "tree", "--ckpt": "file", "--base": "file", "--video": "file", "--videos": "file",
                      "FILES": "file"}, _bench_argv),
    "apclip-export": ("apclip.export.cli", {"--out": "dir"},
                      {"--ckpt": "file", "--labels": "file", "--prompts": "file", "--base": "file",
                       "--bpe-vocab": "file"}, _export_argv),
    "apclip-batch": ("apclip.scale.batch", {"--output": ".jsonl"},
                     {"BUNDLE": "tree", "--input": "file", "--labels": "file", "--prompts": "file"}, _batch_argv),
    "apclip-prompts generate": ("apclip.export.prompts.cli", {"--out": ".json", "--journal": ".jsonl"},
                                {"--labels": "file", "--graph": "file", "--bpe-vocab": "file"},
                                _prompts_argv("generate")),
    "apclip-prompts review": ("apclip.export.prompts.cli", {"--csv": ".csv"}, {"BANK": "file"}, _prompts_argv("review")),
    "apclip-prompts apply-review": ("apclip.export.prompts.cli", {"--out": ".csv"}, {"CSV": "file"},
                                    _prompts_argv("apply-review")),
    "apclip-triton-repo": ("apclip.scale.triton_repo", {"--out": "dir"}, {"BUNDLE": "tree"},
                           lambda tmp, given: [str(given["BUNDLE"])]),
    "apclip-serve": ("apclip.scale.serve", {"--work-dir": "dir"}, {"BUNDLE": "tree"},
                     lambda tmp, given: [str(given["BUNDLE"])]),
}

CASES = [(command, out_flag, in_flag) for command, (_, outputs, inputs, _) in COMMANDS.items()
         for out_flag in outputs for in_flag in inputs]


@pytest.mark.parametrize("command,out_flag,in_flag", CASES, ids=[" ".join(c) for c in CASES])
def test_no_output_can_be_or_lie_inside_an_input(command, out_flag, in_flag, tmp_path, capsys):
    module, outputs, inputs, build = COMMANDS[command]
    suffix, kind = outputs[out_flag], inputs[in_flag]
    os.chdir(tmp_path)  # export refuses the current directory; keep it out of the way
    work = tmp_path / "work"
    if in_flag == "@list":
        video = _file(work / "v.mp4")
        listing = work / f"list{suffix}"
        listing.write_text(f"{video}\n", encoding="utf-8")
        given, protected = {"@list": listing}, listing
    elif kind == "tree":
        folder = work / "tree"
        if in_flag == "IMAGES":
            folder.mkdir(parents=True)
            (folder / "000001.jpg").write_bytes(PRECIOUS)
        else:
            _bundle(folder)
        protected = _file(folder / f"existing{suffix}") if suffix != "dir" else folder / "manifest.json"
        given = {in_flag: folder}
    elif kind == "folder":
        folder = work / "root"
        folder.mkdir(parents=True)
        given, protected = {in_flag: folder}, _file(folder / "video.mp4")
    else:
        protected = _file(work / f"input{suffix if suffix != 'dir' else '.bin'}")
        given = {in_flag: protected}
    if suffix == "dir":  # a folder the command swaps in whole: the one holding the input
        target = protected.parent
    elif kind == "folder":
        target = given[in_flag]  # a file output may not take the root's own path
    else:
        target = protected
    argv = build(work, given) + [out_flag, str(target)]
    before = protected.read_bytes()
    code = _main(module)(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[-1].startswith(f"{command.split()[0]}: error: "), err
    assert any(word in lines[-1] for word in ("would be overwritten", "lies inside", "would delete")), lines[-1]
    assert protected.read_bytes() == before


def test_infer_output_inside_the_bundle_is_refused_by_name(tmp_path, capsys):
    """The first-day mistake: --json bundle/manifest.json (only the bundle folder was compared)."""
    from apclip.engine.cli.infer import main

    bundle = _bundle(tmp_path / "bundle")
    video = _file(tmp_path / "v.mp4")
    for name in ("manifest.json", "vision.onnx", "classes.safetensors"):
        for flag in ("--json", "--csv"):
            assert main([str(video), "--bundle", str(bundle), flag, str(bundle / name)]) == 2
            line = capsys.readouterr().err.strip()
            assert "would be overwritten" in line and "--bundle" in line, line
            assert (bundle / name).read_bytes() == PRECIOUS


def test_train_run_files_are_not_inputs(tmp_path, capsys):
    pytest.importorskip("torch")
    from apclip.train.cli import main

    run = tmp_path / "run"
    init = _file(run / "best.pt")  # fine-tuning the previous run's best.pt into the same folder
    labels, listing = _file(tmp_path / "labels.txt"), _file(tmp_path / "train.txt")
    code = main(["--output", str(run), "--init", str(init), "--labels", str(labels), "--train", str(listing),
                 "--no-progress"])
    line = capsys.readouterr().err.strip()
    assert code == 2 and "--init" in line and "would be overwritten" in line, line
    assert init.read_bytes() == PRECIOUS


def test_two_outputs_may_not_share_a_file(tmp_path, capsys):
    from apclip.engine.cli.infer import main

    video = _file(tmp_path / "v.mp4")
    out = tmp_path / "out.txt"
    assert main([str(video), "--bundle", str(tmp_path / "b"), "--json", str(out), "--csv", str(out)]) == 2
    assert "give each output its own file" in capsys.readouterr().err


# -- what the atomic writers do with links, devices and FIFOs ---------------------------------------------
def test_symlink_target_is_written_and_the_link_kept(tmp_path):
    from apclip.fileio import atomic_write

    target = tmp_path / "real.json"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write("new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text(encoding="utf-8") == "new"


def test_character_device_is_written_in_place_never_replaced(tmp_path):
    from apclip.fileio import AtomicFile, atomic_write

    with atomic_write("/dev/null") as f:
        f.write("discarded")
    with atomic_write("/dev/null", mode=None, suffix=".png") as tmp:  # writers that open files themselves
        Path(tmp).write_bytes(b"png")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # as root, the old writer turned it into a regular file
    assert not list(tmp_path.iterdir())
    with pytest.raises(OSError):  # a full device is an error, not a silent success
        target = AtomicFile("/dev/full", "w")
        target.file.write("x" * 65536)
        target.commit()
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_fifo_is_written_in_place_and_its_reader_gets_the_text(tmp_path):
    from apclip.fileio import atomic_write

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(Path(fifo).read_bytes()))
    reader.start()
    with atomic_write(fifo) as f:
        f.write('{"top1": "waving"}\n')
    reader.join(timeout=30)
    assert received == [b'{"top1": "waving"}\n']
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_stdout_is_the_stream_whatever_it_is_redirected_to(tmp_path):
    """`apclip-infer ... --json /dev/stdout > out.txt` (or `| jq`): written through the descriptor, never
    by renaming a file over whatever /dev/stdout resolves to (a pipe's name is no path; a file would lose
    what was printed before)."""
    import subprocess
    import sys

    code = ("import sys; print('table', flush=True)\nfrom apclip.fileio import atomic_write\n"
            "with atomic_write('/dev/stdout') as f:\n    f.write('json\\n')\n")
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60)
    assert out.read_text() == "table\njson\n"
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == "table\njson\n", piped.stderr
