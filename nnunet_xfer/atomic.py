"""Writing outputs so that nothing half-written is ever left behind, and nothing foreign is deleted.

The one atomic-write module:

* files (text, JSON, CSV, bytes, torch checkpoints) are written to a hidden temporary name beside
  their destination and renamed over it; :func:`atomic_group` writes several files as one unit;
* a folder is built under a hidden temporary name and renamed into place (:func:`atomic_folder`);
* a command's output folder (:func:`owned_output`) carries a marker listing every file the
  command wrote; ``--overwrite`` replaces such a folder only when it holds nothing else, so a
  user's own files are never deleted.

Temporary names start with ``.nnunet_xfer_tmp`` and carry the writer's pid, so that a later run
removes what a killed one left (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import OUTPUT_MARKER, TEMP_PREFIX, nnunet_folders

#: Folders created by us are readable by colleagues as the umask allows (mkdtemp makes 0700).
_FOLDER_MODE = 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(name: str) -> str:
    return f"{TEMP_PREFIX}.{os.getpid()}.{name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries of writers in ``folder`` that no longer run; return what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if not path.name.startswith(TEMP_PREFIX + "."):
            continue
        pid_text = path.name[len(TEMP_PREFIX) + 1:].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def make_folder(path: Path) -> Path:
    """``mkdir -p`` with a one-line error for an impossible or unwritable place."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"cannot create folder {path}: {reason}; choose a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"folder {path} is not writable; choose a writable folder")
    return path


# ---------------------------------------------------------------- files
def _write_via_temp(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(_temp_name(path.name))
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose a writable folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    return _write_via_temp(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return _write_via_temp(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj, indent: int = 2, **kwargs) -> Path:
    """``json.dumps(obj)`` written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs))


def atomic_write_csv(path: Path, frame, **kwargs) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given), written atomically."""
    kwargs.setdefault("index", False)
    return _write_via_temp(path, lambda tmp: frame.to_csv(tmp, **kwargs))


def atomic_torch_save(path: Path, obj) -> Path:
    """``torch.save(obj)`` written atomically."""
    import torch
    return _write_via_temp(path, lambda tmp: torch.save(obj, tmp))


def atomic_group(writers: Mapping[Path, Callable[[Path], None]]) -> list[Path]:
    """Write several files as one unit: every temporary first, then the renames in the given order.

    Either all files are replaced or (on an error while writing) none is. ``writers`` maps each
    destination to a function that writes the given temporary path.
    """
    temps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            make_folder(path.parent)
            tmp = path.with_name(_temp_name(path.name))
            temps[path] = tmp
            write(tmp)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {', '.join(map(str, temps))}: {e.strerror or e}") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return list(temps)


# ---------------------------------------------------------------- folders
@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``out``, on error it is removed.

    Callers decide beforehand whether an existing ``out`` may be replaced (see :func:`owned_output`).
    """
    out = Path(out)
    parent = make_folder(out.parent)
    remove_stale_temporaries(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_name(out.name) + ".", dir=parent))
        tmp.chmod(_FOLDER_MODE & ~_umask())
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}; choose a writable folder") from None
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = parent / _temp_name(out.name + ".old")
            out.rename(old)
            tmp.rename(out)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def listing(folder: Path) -> list[str]:
    """Every file and link below ``folder`` (relative, sorted), the marker left out."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        rel = Path(root).relative_to(folder)
        for name in names + [d for d in dirs if (Path(root) / d).is_symlink()]:
            path = (rel / name).as_posix()
            if path != OUTPUT_MARKER:
                files.append(path)
    return sorted(files)


def write_marker(folder: Path, command: str) -> None:
    """Record every file now in ``folder`` as written by ``nnunet-xfer <command>``."""
    atomic_write_json(Path(folder) / OUTPUT_MARKER, {
        "command": f"nnunet-xfer {command}", "files": listing(folder),
        "written": _dt.datetime.now().isoformat(timespec="seconds")})


def add_to_marker(folder: Path, files: list[str]) -> bool:
    """List ``files`` (relative paths) in the marker of an output folder written by another
    command, so that its ``--overwrite`` may replace them with the rest; False without a marker."""
    marker = Path(folder) / OUTPUT_MARKER
    try:
        record = json.loads(marker.read_text())
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        return False
    record["files"] = sorted(set(record["files"]) | set(files))
    atomic_write_json(marker, record)
    return True


def shown(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, then how many more."""
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def refuse_protected(out: Path, what: str = "output folder") -> None:
    """Refuse an output that equals or contains one of nnU-Net's folders or datasets."""
    out = Path(os.path.abspath(out))
    for root in nnunet_folders():
        root = Path(os.path.abspath(root))
        protected = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
        for folder in protected:
            if out == folder or out in folder.parents:
                raise UserError(f"{what} {out} would replace {folder} (an nnU-Net folder); "
                                f"choose a folder of its own")


def check_replaceable(out: Path, command: str, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and it holds only what we wrote there."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    refuse_protected(out)
    if not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another folder")
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"{out} is not a folder written by nnunet-xfer; remove it yourself or "
                        f"choose another folder")
    marker = out / OUTPUT_MARKER
    written: set[str] = set()
    if marker.is_file():
        try:
            written = set(json.loads(marker.read_text()).get("files", []))
        except (ValueError, UnicodeDecodeError, AttributeError):
            written = set()
    present = listing(out)
    foreign = [f for f in present if f not in written]
    if not marker.is_file() and present:
        foreign = present
    if foreign:
        raise UserError(f"--overwrite refused: {out} holds files nnunet-xfer {command} did not write "
                        f"({shown(foreign)}); move them or choose another folder")


@contextmanager
def owned_output(out: Path, command: str, overwrite: bool = False) -> Iterator[Path]:
    """A command's output folder, built in a temporary folder and renamed into place on success.

    An existing ``out`` is replaced only with ``overwrite`` and only when every file in it is one
    a previous nnunet-xfer run listed in its marker. The new folder's marker lists every file.
    """
    out = Path(out)
    check_replaceable(out, command, overwrite)
    refuse_protected(out)
    with atomic_folder(out) as tmp:
        yield tmp
        write_marker(tmp, command)
