"""Publishing files atomically with the permissions a plain open() would have given them.

Artifacts are written under a temporary name in the target's folder, fsync'd and renamed into
place, so a crash leaves the old file or the new one, never half of one. `tempfile` creates those
private (0600 files, 0700 directories); before the rename they get the mode the user's umask
gives ordinary files, so a bundle exported by CI or root stays readable by the service that runs it.
"""
from __future__ import annotations

import contextlib
import os
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


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # <linux/fs.h>: swap two paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or glibc < 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partial_dir(final: str | os.PathLike) -> Path:
    """A new empty folder `.NAME.partial-PID-XXXX` beside `final` to build it in (same filesystem, so the
    publishing rename is atomic). Leftovers of dead runs are cleaned first (see clean_stale)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))


def clean_stale(final: str | os.PathLike) -> None:
    """After a kill -9: restore `final` from `.NAME.old-PID` if only that is left (the two-rename fallback
    was cut between its renames), then remove `.NAME.partial-PID-*` and `.NAME.old-PID` of dead processes."""
    import re
    import shutil

    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(partial|old)-(\d+)(?:-.*)?$")
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for path in sorted(siblings):
        match = pattern.match(path.name)
        if not match or _pid_alive(int(match[2])) or path.is_symlink() or not path.is_dir():
            continue
        if match[1] == "old" and not os.path.lexists(final):
            os.replace(path, final)
            continue
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Publish the finished directory `tmp` as `final`. An existing `final` is swapped with `tmp` in one
    atomic step (renameat2 RENAME_EXCHANGE), so a kill at any moment leaves the old or the new folder at
    `final`; the old one, now at `tmp`, is removed afterwards (or by the next run's clean_stale). Where the
    filesystem cannot exchange, the old folder is renamed aside to `.NAME.old-PID` first, and clean_stale
    puts it back if a kill came between the two renames."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        publish(tmp, final)
        return
    publish(tmp, tmp)  # modes only: the rename is the exchange below
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# The largest text file a user may hand us (labels, lists, prompt banks, manifests): far above any real
# one (a 100k-label bank is ~50 MB), and small enough that reading it whole cannot exhaust memory.
MAX_USER_FILE_BYTES = int(os.environ.get("APCLIP_MAX_USER_FILE_MB", "256")) << 20


def read_user_bytes(path: str | os.PathLike, what: str, error: type[Exception],
                    max_bytes: int = MAX_USER_FILE_BYTES) -> bytes:
    """The bytes of a file the user named, or `error` in one line. Only regular files: a FIFO, socket or
    device would block or never end, so it is refused before a byte is read (opened non-blocking, then
    fstat'd: no race between the check and the read). At most `max_bytes` ($APCLIP_MAX_USER_FILE_MB)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    except OSError as exc:
        raise error(f"{what} is unreadable: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} is unreadable: it is a folder; give a file")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} is unreadable: not a regular file (a FIFO, socket or device would never end); "
                        f"give a file")
        raise error(f"{what} is {info.st_size} bytes, over the limit of {max_bytes} (APCLIP_MAX_USER_FILE_MB)")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{what} is unreadable: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what} grew past the limit of {max_bytes} bytes while being read")
    return data


def read_user_text(path: str | os.PathLike, what: str, error: type[Exception],
                   max_bytes: int = MAX_USER_FILE_BYTES) -> str:
    """The text of a file the user named (BOM dropped), or `error` in one line: "{what} does not
    exist" / "{what} is unreadable: ..." / not a regular file / too large (what: e.g. "labels file x.txt")."""
    try:
        return read_user_bytes(path, what, error, max_bytes).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is unreadable: {exc}") from None


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The name keeps the target's suffix when asked (video writers pick the container from it).
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        self.tmp = Path(tmp)
        self._fsync = fsync
        self.file: IO[Any] | None = None
        try:
            if mode is None:
                os.close(fd)
            else:
                binary = "b" in mode
                self.file = os.fdopen(fd, mode, **({} if binary else {"encoding": encoding, "newline": ""}))
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def commit(self) -> Path:
        """fsync, chmod to umask defaults and rename over the target."""
        try:
            if self.file is not None:
                self.file.flush()
                if self._fsync:
                    os.fsync(self.file.fileno())
                self.file.close()
            elif self._fsync:
                _fsync_path(self.tmp)
            publish(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        try:
            if self.file is not None and not self.file.closed:
                self.file.close()  # flushes what is buffered: on a full disk that raises ENOSPC again
        except OSError:
            pass  # the file is being thrown away; what matters is that it goes
        finally:
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
