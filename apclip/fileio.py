"""Publishing files atomically with the permissions a plain open() would have given them.

Artifacts are written under a temporary name and renamed into place. `tempfile` creates those
private (0600 files, 0700 directories); before the rename they get the mode the user's umask
gives ordinary files, so a bundle exported by CI or root stays readable by the service that runs it.
"""
from __future__ import annotations

import os
from pathlib import Path


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
