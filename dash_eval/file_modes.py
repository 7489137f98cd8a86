"""Files and folders written atomically (made under a temporary name, then renamed into place), and their modes.

``tempfile.mkstemp`` creates its file 0600 and ``tempfile.mkdtemp`` its folder 0700, whatever the umask, and a
rename keeps the mode. Results directories and the model cache are shared (Slurm jobs, group-readable results
folders), so what is renamed into place first gets the mode a plain ``open()`` or ``mkdir()`` would have given it:
0666 or 0777 less the process umask (0644 and 0755 under umask 022).
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_umask: int | None = None


def _read_umask() -> int:
    # The only portable way to read it is to set it and set it back. In between, a file another thread creates
    # gets umask 077 (private), never 0 (world-writable).
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def process_umask() -> int:
    """The process umask, read once (the first call) and remembered."""
    global _umask
    if _umask is None:
        with _lock:
            if _umask is None:
                _umask = _read_umask()
    return _umask


def default_mode(directory: bool = False, executable: bool = False) -> int:
    """The mode ``open()`` (``0o666``) or ``mkdir()`` (``0o777``) gives under the process umask."""
    return (0o777 if directory or executable else 0o666) & ~process_umask()


def set_default_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a file (or, with ``directory``, a folder) the mode ``open()`` (or ``mkdir()``) would have given it; for a
    temporary file or folder of ``tempfile`` before it is renamed into place."""
    os.chmod(path, default_mode(directory))


def set_default_modes_tree(root: str | os.PathLike[str]) -> None:
    """:func:`set_default_mode` for a folder and everything in it (symbolic links left alone); a file that has an
    execute bit keeps execute bits where the umask allows them."""
    os.chmod(root, default_mode(directory=True))
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            os.chmod(path, default_mode(directory=is_dir, executable=bool(st.st_mode & 0o111)))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder (given the umask's mode, not
    ``mkstemp``'s 0600), flushed to disk, then renamed into place; on any failure the temporary file goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        set_default_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def directory_write_problem(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` cannot be created and written to, or None. A temporary directory is made and removed in
    it (or, while it does not exist, in its nearest existing parent, where it would be created), so the probe
    leaves nothing behind and also catches what permission bits do not tell (a read-only file system, root)."""
    path = Path(directory).absolute()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(parent)!r} is a file, not a directory"
    try:
        probe = tempfile.mkdtemp(prefix=".dash-eval-write-check-", dir=parent)
    except OSError as exc:
        return f"cannot create a directory in {str(parent)!r} ({exc.strerror or exc})"
    os.rmdir(probe)
    return None


def output_file_problem(output: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``output`` (atomically, its folders made as needed), or None."""
    if not str(output).strip():
        return "empty; give a file path"
    if Path(output).is_dir():
        return f"{str(output)!r} is a directory; give a file path"
    return directory_write_problem(Path(output).absolute().parent)
