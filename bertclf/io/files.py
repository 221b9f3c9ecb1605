"""Where bertclf keeps things, and how it writes them: every output appears whole or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from bertclf.errors import UserError


def cache_dir() -> Path:
    """BERTCLF_CACHE, else $XDG_CACHE_HOME/bertclf, else ~/.cache/bertclf."""
    if os.environ.get("BERTCLF_CACHE"):
        return Path(os.environ["BERTCLF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bertclf"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _blocker(folder: Path) -> Path | None:
    """The nearest existing ancestor of `folder` (itself included) when it is not a directory."""
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, before any work, when `path` (a file or folder to create) cannot be written: a file stands where
    a folder must be, or the nearest existing folder is not writable. The atomic writers check again."""
    path = Path(path)
    for p in (path.parent, *path.parent.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{path}: cannot write it ({p} is a file, not a folder); choose another path")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{path}: cannot write it ({p} is not writable); choose another path")
            return


def _make_parent(path: Path) -> None:
    """Create path's folder; a path the user cannot write to is a one-line UserError, not a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = _blocker(path.parent)
        why = f"{blocker} is a file, not a folder" if blocker else f"cannot create {path.parent}: {e.strerror or e}"
        raise UserError(f"{path}: cannot write it ({why}); choose another path") from None


def _cannot_write(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot write it ({e.strerror or e}); choose a writable place with free space")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    A folder that cannot be created or written (a file in the way, no permission, disk full) is a UserError."""
    path = Path(path)
    if path.is_dir():  # before anything is written: os.replace would fail only at the end
        raise UserError(f"{path}: is a folder; give a file name")
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:  # disk full, quota
                raise _cannot_write(path, e) from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from None
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def _replaced_aside(parent: Path) -> list[tuple[Path, Path]]:
    """(.NAME.XXXXXXXX.old/d, NAME) for each folder that atomic_dir moved aside in `parent`."""
    pairs = []
    for old in parent.glob(".*.old") if parent.is_dir() else []:
        name = old.name[1:-len(".old")].rpartition(".")[0]  # mkdtemp: ".{name}." + 8 random chars + ".old"
        if name and (old / "d").is_dir():
            pairs.append((old / "d", parent / name))
    return pairs


def restore_replaced(path: str | os.PathLike) -> bool:
    """Put back the folder at `path` when a kill came between atomic_dir's two renames: the old folder was moved
    aside into `.NAME.*.old/d` and the new one not yet into place. True if something was put back."""
    path = Path(path)
    if path.exists():
        return False
    asides = [aside for aside, name in _replaced_aside(path.parent) if name == path]
    if not asides:
        return False
    newest = max(asides, key=lambda aside: aside.parent.stat().st_mtime)  # the .old folder got d last
    os.replace(newest, path)
    shutil.rmtree(newest.parent, ignore_errors=True)
    fsync_dir(path.parent)
    return True


def restore_all_replaced(parent: str | os.PathLike) -> None:
    """restore_replaced for every folder in `parent` that atomic_dir had moved aside when it was killed."""
    for _, name in _replaced_aside(Path(parent)):
        restore_replaced(name)


def _no_call() -> None:
    pass


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True, between=_no_call):
    """Yield a temporary directory beside `path`; on success it becomes `path`.

    A crash leaves at most a hidden `.name.*.tmp` directory, never a half-written `path`.
    With replace=True an existing `path` is swapped out only after the new one is complete: moved aside to
    `.name.*.old/d`, then the new one renamed into place. A kill between those two renames leaves no `path`;
    restore_replaced (called here first, and by the readers of checkpoints) puts the old one back.
    between(): called between the two renames (tests stop a run there).
    """
    path = Path(path)
    _make_parent(path)
    restore_replaced(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                if p.stat().st_mode & 0o777 == 0o600:  # some writers make private files; use the umask
                    os.chmod(p, 0o666 & ~_umask())
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            if not replace:
                raise FileExistsError(path)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "d")
            try:
                between()
                os.replace(tmp, path)
            except BaseException:
                restore_replaced(path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
