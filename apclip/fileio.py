"""Publishing files atomically with the permissions a plain open() would have given them.

Artifacts are written under a temporary name in the target's folder, fsync'd and renamed into
place, so a crash leaves the old file or the new one, never half of one. `tempfile` creates those
private (0600 files, 0700 directories); before the rename they get the mode the user's umask
gives ordinary files, so a bundle exported by CI or root stays readable by the service that runs it.

What a path names decides how it is written (`AtomicFile`): a symlink is followed and its target
written (the link stays a link); a character device or FIFO (`/dev/stdout`, `/dev/null`, a named
pipe a reader waits on) is written in place, never replaced by a regular file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """chmod `tmp` (file or directory tree) to umask defaults, then rename it to `final`."""
    tmp = Path(tmp)
    mask = _umask()
    if tmp.is_dir():
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, final)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Publish the finished directory `tmp` as `final`; an existing `final` is moved aside first and
    removed only once the new one is in place, so a crash never leaves neither."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        publish(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    publish(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def read_user_text(path: str | os.PathLike, what: str, error: type[Exception]) -> str:
    """The text of a file the user named (BOM dropped), or `error` in one line: "{what} does not
    exist" / "{what} is unreadable: ..." (what: e.g. "labels file labels.txt")."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} is unreadable: {exc}") from None


def resolve_output(path: str | os.PathLike) -> Path:
    """Where a write to `path` lands: symlinks followed (a dangling link's target too), made absolute."""
    return Path(os.path.realpath(path))


_FD_PATHS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/self/fd/")


def is_stream_target(path: str | os.PathLike) -> bool:
    """A character device, a FIFO or one of this process's descriptors (/dev/stdout, whatever it is
    redirected to): written in place, since renaming a file over it would destroy it or cut the stream."""
    text = os.fspath(path)
    if text in _FD_PATHS[:2] or text.startswith(_FD_PATHS[2:]):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class AtomicFile:
    """A temporary file beside `path` that becomes `path` on commit() and vanishes on discard().

    mode None: only the temporary path exists (for writers that open files themselves: safetensors,
    cv2.VideoWriter, torch.save); "w"/"wb"/...: `file` is open for writing. Use `atomic_write` where
    a with-block fits; this class serves writers whose commit comes later (a run's JSON lines).
    """

    def __init__(self, path: str | os.PathLike, mode: str | None = None, *, encoding: str | None = "utf-8",
                 suffix: str = ".tmp", fsync: bool = True) -> None:
        self.path = Path(path)
        # A device or FIFO is asked through the path as given: /dev/stdout resolves to /proc/self/fd/1, whose
        # link text (pipe:[123]) is no path. A symlink's target is what gets replaced; the link itself stays
        # (users link latest.json -> run/x.json).
        self.in_place = is_stream_target(self.path)
        self.target = self.path if self.in_place else resolve_output(self.path)
        self._fsync = fsync and not self.in_place
        self.file: IO[Any] | None = None
        text = {"encoding": encoding, "newline": ""}
        if self.in_place and mode is not None:
            # A device or FIFO: opened as it is (a FIFO's open waits for its reader, as `cmd > fifo` does).
            self.tmp = self.target
            # Appending: `cmd >> log` redirected stdout must not be truncated by our own open.
            self.file = open(self.target, mode.replace("w", "a"), **({} if "b" in mode else text))
            return
        # mode None on a device: the writer fills a private temporary file, copied into the device on commit.
        folder = None if self.in_place else self.target.parent
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        # The name keeps the target's suffix when asked (video writers pick the container from it).
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=suffix, dir=folder)
        self.tmp = Path(tmp)
        try:
            if mode is None:
                os.close(fd)
            else:
                self.file = os.fdopen(fd, mode, **({} if "b" in mode else text))
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def commit(self) -> Path:
        """fsync, chmod to umask defaults and rename over the target (devices and FIFOs: flush or copy in)."""
        try:
            if self.file is not None:
                self.file.flush()
                if self._fsync:
                    os.fsync(self.file.fileno())
                self.file.close()
            elif self._fsync:
                _fsync_path(self.tmp)
            if self.in_place:
                if self.tmp != self.target:
                    with open(self.tmp, "rb") as src, open(self.target, "ab") as dst:
                        shutil.copyfileobj(src, dst)
                    self.tmp.unlink(missing_ok=True)
            else:
                publish(self.tmp, self.target)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.tmp != self.target:  # never unlink the device or FIFO written in place
            self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str | None = "w", *, encoding: str | None = "utf-8",
                 suffix: str = ".tmp", fsync: bool = True) -> Iterator[Any]:
    """Write `path` atomically: yields an open file (mode "w", "wb", ...) or, with mode None, the
    temporary Path to write to. On success the file is fsync'd and renamed into place with umask
    modes; on any error (Ctrl-C included) the temporary file is removed and `path` is untouched.

        with atomic_write("bank.json") as f:
            f.write(text)
        with atomic_write("classes.safetensors", mode=None) as tmp:
            save_file(tensors, tmp)
    """
    target = AtomicFile(path, mode, encoding=encoding, suffix=suffix, fsync=fsync)
    try:
        yield target.file if mode is not None else target.tmp
    except BaseException:
        target.discard()
        raise
    target.commit()
