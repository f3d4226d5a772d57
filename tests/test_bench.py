"""apclip-bench: the contender registry, parity (passes for ORT CPU, fails for a bundle made from other
weights), latency JSON, compare, plots, and the GPU paths (skipped here with the registry's reason)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from apclip.benchmarks import cli
from apclip.benchmarks import contenders as backends

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "preprocess", "h2d", "encode", "total", "stream")
STATS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "mean_ms")


@pytest.fixture(scope="module")
def parity_videos(tmp_path_factory) -> Path:
    """A list file of 3 short varied videos (the default set is 16; three keep the suite fast)."""
    from apclip.testing.videos import write_varied_videos

    folder = tmp_path_factory.mktemp("parity-videos")
    videos = write_varied_videos(folder, count=3, frames=8)
    listing = folder / "videos.txt"
    listing.write_text("# generated\n" + "\n".join(v.name for v in videos) + "\n", encoding="utf-8")
    return listing


@pytest.fixture(scope="module")
def latency_video(tmp_path_factory) -> Path:
    from apclip.testing.videos import write_test_video

    return write_test_video(tmp_path_factory.mktemp("latency") / "clip.avi", frames=75, size=(320, 240), fps=25)


def _bench(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- registry -----------------------------------------------------------------------------------------
def test_select_names_and_unknown():
    chosen = backends.select("ort,numpy")
    assert [c.name for c in chosen] == ["ort:fp32", "ort:int8", "numpy:fp32"]
    assert backends.select("ort-cpu:fp32,torch-cpu") == backends.select("ort:fp32,torch")  # earlier spellings
    assert [c.name for c in backends.select("torch-cuda:bf16")] == ["torch-cuda:bf16"]
    assert not any(c.reference for c in backends.select(None))
    assert any(c.reference for c in backends.select(None, include_reference=True))
    with pytest.raises(backends.UnknownContender, match="nope.*choose among"):
        backends.select("ort,nope")


def test_every_unavailable_contender_says_why(tiny_bundle, demo_assets):
    from apclip.bundle import read_manifest

    ctx = backends.BuildContext(read_manifest(tiny_bundle), demo_assets["checkpoint"])
    reasons = dict((c.name, r) for c, r in backends.probe_all(ctx))
    assert reasons["ort:fp32"] is None and reasons["numpy:fp32"] is None
    assert reasons["onnx:fp32"] is None  # the fixture bundle has scorer.onnx
    assert "vision.int8.onnx" in reasons["ort:int8"]
    assert "--ckpt" in backends.probe(backends.select("torch")[0], backends.BuildContext(ctx.manifest))
    if backends.cuda_reason() is not None:
        for name in ("torch-cuda:fp16", "torch-cuda:bf16"):
            assert reasons[name], name
        # tests/kernels sets TRITON_INTERPRET=1 for the session: the kernel then runs on the CPU interpreter
        assert bool(reasons["triton:fp16"]) == (os.environ.get("TRITON_INTERPRET") != "1")


# -- parity ---------------------------------------------------------------------------------------------
def test_parity_passes_for_ort_cpu(tiny_bundle, demo_assets, parity_videos, tmp_path, capsys, monkeypatch):
    """Every contender by default, a registered one included (how a later backend plugs in)."""
    from apclip.engine.runners.encoders import ort_runners

    def build(ctx):
        runner = ort_runners(ctx.manifest, cuda=False, threads=1, batch_size=7)[0]  # odd batches
        runner.name = "ort-cpu-test"
        return runner

    import dataclasses

    from apclip.engine.runners import table

    plugin = dataclasses.replace(table.find("ort", "fp32"), name="test-plugin", precision="fp16",
                                 probe=lambda ctx: None, build=lambda ctx: (build(ctx), None))
    monkeypatch.setattr(table, "ROWS", (*table.ROWS, plugin))  # how a later backend plugs in: a row
    out_json = tmp_path / "parity.json"
    code, out, _ = _bench(["parity", str(tiny_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--videos",
                           str(parity_videos), "--json", str(out_json), "--quiet"], capsys)
    assert code == 0, out
    report = json.loads(out_json.read_text())
    rows = {r["contender"]: r for r in report["rows"]}
    assert report["passed"] and len(report["videos"]) == 3
    assert rows["test-plugin:fp16"]["status"] == "pass"
    assert rows["test-plugin:fp16"]["thresholds"]["min_cosine"] == 0.999  # judged as fp16
    ort = rows["ort:fp32"]
    assert ort["status"] == "pass"
    assert 0.99999 <= ort["cosine_min"] <= ort["cosine_p1"] <= ort["cosine_median"] <= 1.0 + 1e-6
    assert 0 < ort["abs_diff_p99"] <= ort["abs_diff_max"] < 1e-4  # not bit-identical: a real comparison
    assert ort["top1_agreement"] == 1.0 and ort["top5_agreement"] == 1.0
    assert ort["file_bytes"] > 0 and ort["ms_per_clip"] > 0
    assert ort["thresholds"] == {"min_cosine": 0.99999, "max_score_diff": 1e-4, "min_top1": 1.0}
    for scorer in ("numpy:fp32", "onnx:fp32"):
        assert rows[scorer]["status"] == "pass" and rows[scorer]["score_diff_max"] < 1e-5
    for name in ("ort:int8", "trt:fp16", "openvino:int8"):
        assert rows[name]["status"] == "unavailable" and rows[name]["reason"]
    from apclip.extras import importable

    assert rows["openvino:fp32"]["status"] == ("pass" if importable("openvino") else "unavailable")
    assert rows["torch:fp32"]["status"] == "reference"
    assert "PASS" in out and any(line.split()[:2] == ["ort:fp32", "pass"] for line in out.splitlines())


@pytest.fixture(scope="module")
def perturbed_bundle(tiny_bundle, demo_assets, tmp_path_factory) -> Path:
    """The tiny bundle with vision.onnx exported from slightly different weights; its manifest's files
    entry re-hashed, so it loads and only parity can tell."""
    import torch

    from apclip.bundle import MANIFEST, VISION_FILE, read_manifest, sha256_file
    from apclip.checkpoint import load_model
    from apclip.export.onnx_export import export_vision

    out = tmp_path_factory.mktemp("perturbed") / "bundle"
    shutil.copytree(tiny_bundle, out)
    model = load_model(demo_assets["checkpoint"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.visual.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01 * (param.std() if param.numel() > 1 else 1))
    export_vision(model, out / VISION_FILE, 17, 1024)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][VISION_FILE] = {"sha256": sha256_file(out / VISION_FILE), "bytes": (out / VISION_FILE).stat().st_size}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    read_manifest(out)  # loads: every hash matches
    return out


def test_parity_fails_for_other_weights(perturbed_bundle, demo_assets, parity_videos, tmp_path, capsys):
    out_json = tmp_path / "parity.json"
    code, out, _ = _bench(["parity", str(perturbed_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--videos",
                           str(parity_videos), "--backends", "ort,numpy", "--json", str(out_json), "--quiet"],
                          capsys)
    assert code == 1, out
    rows = {r["contender"]: r for r in json.loads(out_json.read_text())["rows"]}
    ort = rows["ort:fp32"]
    assert ort["status"] == "fail" and "cosine min" in ort["reason"]
    assert ort["cosine_min"] < 0.99999
    assert rows["numpy:fp32"]["status"] == "pass"  # the scorer is judged on the reference embeddings
    assert "FAIL: ort:fp32 failed" in out


def test_parity_thresholds_are_overridable(perturbed_bundle, demo_assets, parity_videos, capsys):
    code, out, _ = _bench(["parity", str(perturbed_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--videos",
                           str(parity_videos), "--backends", "ort:fp32", "--min-cosine", "0.5",
                           "--max-score-diff", "fp32=1", "--min-top1", "0", "--quiet"], capsys)
    assert code == 0, out


def test_parity_refuses_bad_input(tiny_bundle, demo_assets, tmp_path, capsys):
    ckpt = str(demo_assets["checkpoint"])
    code, _, err = _bench(["parity", str(tiny_bundle), "--ckpt", ckpt, "--videos", str(tmp_path / "none")], capsys)
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = _bench(["parity", str(tiny_bundle), "--ckpt", ckpt, "--backends", "warp-drive"], capsys)
    assert code == 2 and "unknown backend(s) warp-drive" in err
    other = tmp_path / "other.pt"
    other.write_bytes(Path(ckpt).read_bytes() + b"\0")
    code, _, err = _bench(["parity", str(tiny_bundle), "--ckpt", str(other), "--videos", str(tmp_path)], capsys)
    assert code == 1 and "holds no video files" in err
    (tmp_path / "v.avi").write_bytes(b"")
    code, _, err = _bench(["parity", str(tiny_bundle), "--ckpt", str(other), "--videos", str(tmp_path)], capsys)
    assert code == 1 and "sha256 differs" in err


def test_generated_set_varies(tmp_path):
    import cv2

    from apclip.benchmarks.inputs import generated_videos

    videos = generated_videos(tmp_path, count=16, frames=3)
    assert len(videos) == 16 and generated_videos(tmp_path, count=16, frames=3) == videos  # reused
    sizes, colours, motion = set(), set(), []
    for video in videos:
        capture = cv2.VideoCapture(str(video))
        frames = [capture.read()[1] for _ in range(3)]
        capture.release()
        sizes.add(frames[0].shape[:2])
        colours.add(tuple(np.round(frames[0].reshape(-1, 3).mean(0) / 8).astype(int)))
        motion.append(float(np.abs(frames[2].astype(int) - frames[0].astype(int)).mean()))
    assert len(sizes) == 8 and any(h > w for h, w in sizes) and any(h == w for h, w in sizes)
    assert len(colours) >= 12
    assert min(motion) < 1.0 < max(motion)  # still videos and moving ones


# -- latency and compare ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def latency_json(tiny_bundle, demo_assets, latency_video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latency-out")
    code = cli.main(["latency", str(tiny_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--video",
                     str(latency_video), "--backends", "ort:fp32,torch,numpy,onnx,torch-cuda", "--runs", "2",
                     "--warmup", "1", "--large-classes", "20", "--large-prompts", "6", "--json", str(out / "a.json"),
                     "--plot", str(out / "a.png"), "--quiet"])
    assert code == 0
    return out / "a.json"


def test_latency_json_has_every_field(latency_json):
    report = json.loads(latency_json.read_text())
    assert report["benchmark"] == "latency" and report["images_per_clip"] == 32
    rows = report["rows"]
    for contender in ("ort:fp32", "torch:fp32"):
        stages = {r["stage"]: r for r in rows if r["contender"] == contender}
        assert set(stages) == {"h2d", "encode", "total", "stream"}
        assert stages["h2d"]["median_ms"] is None and "no copy" in stages["h2d"]["note"]  # CPU: nothing to copy
        assert stages["stream"]["windows"] == 2  # 3 s video, 2 s windows every 1 s
    timed = [r for r in rows if r["timed_with"] != "not applicable"]
    assert {r["stage"] for r in timed} == {"decode", "preprocess", "encode", "total", "stream", "score K=5",
                                           "score K=20xP=6"}
    for r in timed:
        assert r["runs"] == 2
        assert all(r[k] > 0 for k in STATS), r
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    summaries = {c["contender"]: c for c in report["contenders"]}
    for contender in ("ort:fp32", "torch:fp32"):
        c = summaries[contender]
        for key in ("clips_per_s", "frames_per_s", "encode_images_per_s", "windows_per_s", "peak_rss_mib"):
            assert c[key] > 0, (contender, key)
        assert c["frames_per_s"] == pytest.approx(32 * c["clips_per_s"])
    assert summaries["numpy:fp32"]["peak_rss_mib"] > 0
    machine = report["machine"]
    assert machine["cpu"]["cores"] >= 1 and machine["cpu"]["cpu"]
    assert machine["versions"]["apclip"] and machine["versions"]["onnxruntime"]
    assert set(machine["jetson"]) == {"board", "l4t_release", "power_mode"}
    for key, value in machine["jetson"].items():
        assert value is not None or f"jetson.{key}" in machine["missing"]
    if backends.cuda_reason() is not None:
        unavailable = {u["contender"]: u["reason"] for u in report["unavailable"]}
        assert unavailable["torch-cuda:fp16"] and unavailable["torch-cuda:bf16"]
    assert latency_json.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reads_two_files(latency_json, tmp_path, capsys):
    slower = json.loads(latency_json.read_text())
    for row in slower["rows"]:
        if row["median_ms"] is not None:
            row["median_ms"] *= 2
    other = tmp_path / "b.json"
    other.write_text(json.dumps(slower))
    code, out, _ = _bench(["compare", str(latency_json), str(other), "--json", str(tmp_path / "c.json"),
                           "--plot", str(tmp_path / "c.png")], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("encode") and "ort:fp32" in line)
    assert line.split()[-1] == "2.00"
    data = json.loads((tmp_path / "c.json").read_text())
    encode = next(r for r in data["rows"] if r["stage"] == "encode" and r["contender"] == "ort:fp32")
    assert encode["ratio"] == [1.0, pytest.approx(2.0)]
    assert "noise" in out and (tmp_path / "c.png").stat().st_size > 0


def test_compare_refuses_bad_files(latency_json, tmp_path, capsys):
    code, _, err = _bench(["compare", str(latency_json)], capsys)
    assert code == 1 and "at least two" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = _bench(["compare", str(latency_json), str(bad)], capsys)
    assert code == 1 and "not readable JSON" in err


def test_timing_drops_warmup_and_summarizes():
    from apclip.benchmarks.timing import measure, summarize

    calls = []
    times = iter([9.0, 1.0, 2.0, 3.0])  # the first (warm-up) value is dropped
    out = measure({"x": lambda: (calls.append(1), next(times))[1]}, runs=3, warmup=1)
    assert out == {"x": [1.0, 2.0, 3.0]} and len(calls) == 4
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s["median_ms"], s["min_ms"], s["max_ms"], s["runs"]) == (3.0, 1.0, 100.0, 5)
    assert 4.0 < s["p90_ms"] < s["p99_ms"] < 100.0


@pytest.mark.parametrize("samples", [
    [127.0, 126.5, 7.5, 131.0, 128.2, 127.7, 125.9, 130.4, 129.1, 126.8],  # one fast outlier (a cached call)
    [7.5] * 9 + [127.0],  # one slow outlier
    [3.0], [2.0, 1.0], list(np.random.default_rng(0).lognormal(3, 1, 101)),
])
def test_every_percentile_comes_from_the_same_samples(samples):
    from apclip.benchmarks.timing import summarize

    s = summarize(samples)
    assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert (s["min_ms"], s["max_ms"], s["runs"]) == (min(samples), max(samples), len(samples))
    assert s["median_ms"] == pytest.approx(float(np.median(samples)))
    assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"]


def test_timings_must_be_milliseconds_of_one_stage():
    from apclip.benchmarks.timing import per_item, summarize

    for bad in ([], [1.0, float("nan")], [2.0, -1.0]):
        with pytest.raises(ValueError):
            summarize(bad)
    # a stream run is divided by the windows of that same run, not by those of the last run
    assert per_item([300.0, 200.0, 90.0], [3, 2, 1]) == [100.0, 100.0, 90.0]
    with pytest.raises(ValueError):
        per_item([1.0, 2.0], [1])


# -- GPU paths ----------------------------------------------------------------------------------------------
def test_torch_cuda_parity(tiny_bundle, demo_assets, parity_videos, capsys):
    reason = backends.cuda_reason()
    if reason is not None:
        pytest.skip(f"torch-cuda parity needs a CUDA GPU: {reason}")
    code, out, _ = _bench(["parity", str(tiny_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--videos",
                           str(parity_videos), "--backends", "torch-cuda,triton", "--quiet"], capsys)
    assert code == 0, out


def test_torch_cuda_latency_times_on_the_device(tiny_bundle, demo_assets, latency_video, tmp_path):
    reason = backends.cuda_reason()
    if reason is not None:
        pytest.skip(f"torch-cuda latency needs a CUDA GPU: {reason}")
    out = tmp_path / "gpu.json"
    assert cli.main(["latency", str(tiny_bundle), "--ckpt", str(demo_assets["checkpoint"]), "--video",
                     str(latency_video), "--backends", "torch-cuda,triton", "--runs", "3", "--json", str(out),
                     "--quiet"]) == 0
    report = json.loads(out.read_text())
    stages = {r["stage"]: r for r in report["rows"] if r["contender"] == "torch-cuda:fp16"}
    assert stages["h2d"]["timed_with"].startswith("cuda events") and stages["h2d"]["median_ms"] > 0
    assert stages["encode"]["timed_with"].startswith("cuda events") and stages["encode"]["median_ms"] > 0
    summary = next(c for c in report["contenders"] if c["contender"] == "torch-cuda:fp16")
    assert summary["peak_device_mib"] > 0
    assert any(r["timed_with"] == "triton do_bench" for r in report["rows"] if r["contender"] == "triton:fp16")


def test_kernel_without_gpu_exits_2_with_reason(capsys):
    reason = backends.cuda_reason()
    if reason is None:
        pytest.skip("a CUDA GPU is present: the kernel benchmark runs for real (benchmarks/gpu_check.sh)")
    code, _, err = _bench(["kernel"], capsys)
    assert code == 2 and "skipped" in err and reason in err


def test_gpu_check_script_dry_run_and_refusal(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    dry = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    for step in ("kernel_maka_check", "gpu_backends_check", "cli kernel", "workload --preset ViT-B-16", "cli parity", "cli latency"):
        assert step in dry.stdout
    assert not (tmp_path / "out").exists()
    if backends.nvidia_driver_present():
        pytest.skip("an NVIDIA driver is present: gpu_check.sh would run for real")
    real = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert real.returncode == 2 and "no NVIDIA GPU" in real.stderr
    assert not (tmp_path / "out").exists()
