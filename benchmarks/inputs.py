"""Benchmark inputs: the user's videos (a folder or a list file), or a generated varied set."""
from __future__ import annotations

import os
from pathlib import Path

from apclip.errors import ApclipError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
MIN_GENERATED = 16  # the "at least 16" for a set that runs anywhere


class InputError(ApclipError):
    pass


def read_video_list(spec: str | os.PathLike) -> list[Path]:
    """A folder (its video files, sorted) or a text file with one path per line (# comments; relative
    paths are relative to the list file)."""
    path = Path(spec)
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise InputError(f"--videos {path} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
        return videos
    if not path.is_file():
        raise InputError(f"--videos {path} does not exist: pass a folder of videos or a text file listing them")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--videos {path} is not a readable text list of videos ({exc})") from None
    videos = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        video = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not video.is_file():
            raise InputError(f"--videos {path} line {number}: {video} does not exist")
        videos.append(video)
    if not videos:
        raise InputError(f"--videos {path} lists no videos (one path per line)")
    return videos


def generated_videos(folder: str | os.PathLike, count: int = MIN_GENERATED, frames: int = 24) -> list[Path]:
    """The varied generated set (sizes, aspect ratios, colours, motion), written once into `folder`."""
    from apclip.testing.videos import write_varied_videos

    if count < 1:
        raise InputError(f"--count {count}: generate at least one video")
    folder = Path(folder) / f"varied-{count}x{frames}"
    existing = sorted(folder.glob("varied-*.avi")) if folder.is_dir() else []
    if len(existing) == count:
        return existing
    return write_varied_videos(folder, count=count, frames=frames)


def latency_video(folder: str | os.PathLike, seconds: float = 4.0, fps: float = 30.0,
                  size: tuple[int, int] = (1280, 720)) -> Path:
    """A generated 720p video for the latency stages (mp4v where OpenCV writes it, else MJPG)."""
    from apclip.testing.videos import codec_available, write_test_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codec, suffix = ("mp4v", ".mp4") if codec_available("mp4v", ".mp4") else ("MJPG", ".avi")
    path = folder / f"latency-{size[0]}x{size[1]}-{seconds:g}s-{fps:g}fps{suffix}"
    if not path.is_file():
        from apclip.fileio import atomic_write

        with atomic_write(path, mode=None, suffix=suffix) as tmp:  # a killed run leaves no half video
            write_test_video(tmp, frames=int(round(seconds * fps)), size=size, fps=fps, codec=codec)
    return path
