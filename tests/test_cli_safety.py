"""What a CLI must never do: delete what is not a bundle, overwrite an input, crash with a traceback,
or take seconds (importing torch) to report a missing file. Plus the exit codes and --version every
command shares."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apclip import __version__
from apclip.bundle import MANIFEST

from apclip.export.cli import main as export_main


def run_export(capsys, *argv) -> tuple[int, str]:
    code = export_main([str(a) for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    return code, err


def one_error_line(err: str, prog: str = "apclip-export") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


def test_force_refuses_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    (out / MANIFEST).write_text('{"format": "something-else"}', encoding="utf-8")
    code, err = run_export(capsys, "--ckpt", tmp_path / "absent.pt", "--out", out, "--force")
    assert code == 1
    # The checkpoint is missing too: paths are checked in order, the first problem is the one named.
    assert "absent.pt" in one_error_line(err)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read: --out is refused first")
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", out, "--force")
    line = one_error_line(err)
    assert code == 1 and "not an apclip bundle" not in line and "readable apclip manifest.json" in line
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg", MANIFEST]
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_force_refuses_a_regular_file_and_a_link(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    target = tmp_path / "notes.txt"
    target.write_text("keep me", encoding="utf-8")
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", target, "--force")
    assert code == 1 and "not an apclip bundle" in one_error_line(err)
    assert target.read_text(encoding="utf-8") == "keep me"
    bundle = tmp_path / "real"
    bundle.mkdir()
    (bundle / MANIFEST).write_text(json.dumps({"format": "apclip-bundle"}), encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", link, "--force")
    assert code == 1 and "link" in one_error_line(err)
    assert (bundle / MANIFEST).exists()


@pytest.mark.parametrize("out", [".", "..", "sub/.."])
def test_out_current_directory_is_refused_without_traceback(tmp_path, capsys, monkeypatch, out):
    (tmp_path / "sub").mkdir()
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "apclip-bundle"}), encoding="utf-8")
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", out, "--force")
    assert code == 1 and "current directory" in one_error_line(err)
    assert ckpt.exists() and (tmp_path / MANIFEST).exists()


def test_out_holding_the_checkpoint_is_refused(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / MANIFEST).write_text(json.dumps({"format": "apclip-bundle"}), encoding="utf-8")
    ckpt = bundle / "best.pt"
    ckpt.write_bytes(b"weights")
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", bundle, "--force")
    assert code == 2 and "holds the input" in one_error_line(err)
    assert ckpt.read_bytes() == b"weights"


def test_missing_ckpt_is_reported_before_torch_is_imported(tmp_path):
    code = ("import sys; from apclip.export.cli import main; rc = main(['--ckpt', sys.argv[1], '--out', sys.argv[2]]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absent.pt"), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "False"  # the check ran without importing torch
    assert proc.stderr.strip() == f"apclip-export: error: checkpoint {tmp_path / 'absent.pt'} does not exist (--ckpt)"


def test_missing_extra_exits_2(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    code, err = run_export(capsys, "--ckpt", ckpt, "--out", tmp_path / "b")
    assert code == 2 and '-e ".[torch]"' in one_error_line(err)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("module", ["apclip.export.cli", "apclip.engine.cli.infer", "apclip.export.prompts.cli",
                                    "apclip.engine.cli.bundle"])
def test_version_on_every_command(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f"{__version__} (apclip)")


def test_usage_errors_exit_2(capsys, tmp_path):
    from apclip.engine.cli.infer import main as infer_main

    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    assert infer_main([str(video), "--topk", "0"]) == 2
    assert "--topk" in one_error_line(capsys.readouterr().err, "apclip-infer")
    with pytest.raises(SystemExit) as info:
        infer_main([])  # argparse: SOURCE is required
    assert info.value.code == 2


@pytest.mark.parametrize("flag", ["--out-video", "--json", "--csv", "--report"])
def test_infer_refuses_an_output_that_is_an_input(capsys, tmp_path, flag):
    from apclip.engine.cli.infer import main as infer_main

    video = tmp_path / ("v.html" if flag == "--report" else "v.mp4")
    video.write_bytes(b"precious video bytes")
    # Spelled differently from the input, resolving to it: ./v.mp4 from inside tmp_path, via a subfolder.
    (tmp_path / "sub").mkdir()
    code = infer_main([str(video), "--bundle", str(tmp_path / "no-bundle"), flag, str(tmp_path / "sub" / ".." / video.name)])
    line = one_error_line(capsys.readouterr().err, "apclip-infer")
    assert code == 2 and "is the input" in line and "overwritten" in line
    assert video.read_bytes() == b"precious video bytes"


def test_closed_stdout_is_not_an_error(tiny_bundle):
    """`apclip-bundle info bundle | head -1`: the reader leaves early; no error line, no traceback."""
    script = Path(sys.executable).with_name("apclip-bundle")
    if not script.exists():
        pytest.skip("apclip-bundle not installed in this environment")
    proc = subprocess.Popen([str(script), "info", str(tiny_bundle)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err == b""
