"""Bounded resources: files that claim or inflate to huge sizes are refused (or skipped) with one line,
before the memory is spent. Every hostile file is built here."""
from __future__ import annotations

import gzip
import struct
import zipfile
import zlib

import numpy as np
import pytest


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming width x height and almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")


def test_gzip_bomb_vocabulary_is_refused_after_a_bounded_read(tmp_path):
    from apclip.tokenizer import MAX_VOCAB_BYTES, Tokenizer

    bomb = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        for _ in range(MAX_VOCAB_BYTES // (1 << 20) + 8):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20  # small on disk, 24 MB inflated
    with pytest.raises(ValueError, match="inflates to more than"):
        Tokenizer(bomb)


def test_zip_bomb_checkpoint_is_refused_before_torch_loads_it(tmp_path):
    pytest.importorskip("torch")
    from apclip.checkpoint import read_checkpoint_object
    from apclip.errors import CheckpointError

    bomb = tmp_path / "best.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            for _ in range(256):
                member.write(bytes(1 << 20))
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="zip bomb") as info:
        read_checkpoint_object(bomb)
    assert "\n" not in str(info.value)


def test_a_png_claiming_100000_squared_skips_only_itself(tmp_path):
    import cv2

    from apclip.engine.video.sources import ImageFolderSource

    rng = np.random.default_rng(0)
    for i in (1, 2, 4):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    (tmp_path / "frame3.png").write_bytes(png_header_claiming(100000, 100000))
    (tmp_path / "frame0.png").write_bytes(png_header_claiming(20000, 20000))  # under OpenCV's limit, over ours
    source = ImageFolderSource(tmp_path)
    frames = list(source.frames())
    assert len(frames) == 3 and all(f.image.shape == (24, 32, 3) for f in frames)
