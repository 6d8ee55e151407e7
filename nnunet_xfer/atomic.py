"""Every output of the package: nothing half-written, nothing foreign deleted, no race at the end.

The one output guard is :func:`check_replaceable`. Every command calls it *before* any work, for
every file or folder it will write, and gets a :class:`Claim`; the output is then built under a
hidden temporary name and swapped into place with that claim (:func:`owned_output` for folders,
the ``atomic_write_*`` functions given the claim for files, :func:`swap_into_place`,
:func:`remove_owned`). The rules (docs/layout.md, "Output rules"):

1. **Never an input, never nnU-Net's.** An output never is, holds or lies inside an input of the
   command (``inputs``), never is or holds an nnU-Net folder or dataset (only ``convert`` writes
   dataset folders: ``nnunet_dataset``), and a folder output is never the current folder or one
   holding it.
2. **Only what the command wrote.** An existing output is replaced only with ``--overwrite`` and
   only when the same command wrote all of it: a folder whose marker (``.nnunet_xfer_output.json``,
   written by the same command) lists every file in it, or a file the command recognises as its
   own (``written``). Anything else is refused before any work, naming the foreign files.
3. **Race-free final step.** The claim records what was at the output when the command started
   (device and inode). At the end, a new output goes into place with ``renameat2(RENAME_NOREPLACE)``
   (Linux; elsewhere a hard link or an exclusive ``mkdir``); a replacement with
   ``renameat2(RENAME_EXCHANGE)``, after which the old output is checked again (same inode, and
   still only what the command wrote) before it is deleted, and swapped back when it is not. So
   something that appears (or changes) at the output while the command runs is never deleted: the
   run stops with one line, and this run's output is kept beside it (``<name>.new-<pid>``).

Temporary names start with ``.nnunet_xfer_tmp`` and carry the writer's pid, so that a later run
removes what a killed one left (:func:`remove_stale_temporaries`). Every CSV goes through
:func:`atomic_write_csv`, which neutralises spreadsheet formulas (OWASP's CSV-injection rule).
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import OUTPUT_MARKER, TEMP_PREFIX, nnunet_folders

#: Folders created by us are readable by colleagues as the umask allows (mkdtemp makes 0700).
_FOLDER_MODE = 0o777
#: A write that leaves fewer bytes than this free is taken as cut short by a full disk
#: (SimpleITK reports a failed write on stderr only and returns as if it had succeeded).
_MIN_FREE_BYTES = 4096


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
        _remove(path)
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


def _write_error(path: Path, e: OSError) -> UserError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"cannot write {path}: no space left on the disk (nothing was replaced); "
                         f"free some space or choose another folder")
    return UserError(f"cannot write {path}: {e.strerror or e}; choose a writable folder")


def check_space(path: Path) -> None:
    """Refuse a write that filled the disk (some writers fail silently when it is full)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return
    if st.f_bavail * st.f_frsize < _MIN_FREE_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ---------------------------------------------------------------- the guard
#: A file's recogniser: True when the command wrote this file.
FileRecogniser = Callable[[Path], bool]
#: A folder's recogniser: the relative paths the command wrote in it (None: it did not write it).
FolderRecogniser = Callable[[Path], "set[str] | None"]


@dataclass(frozen=True)
class Claim:
    """What :func:`check_replaceable` allowed: where, by which command, and what was there."""

    path: Path
    command: str
    folder: bool
    #: (device, inode, size, mtime) of the output found at the check; None: nothing was there
    found: tuple[int, int, int, int] | None
    written: Callable[[Path], object] | None = field(default=None, compare=False)

    def check_inputs(self, inputs: Iterable[Path | None]) -> None:
        """Refuse (one line) an output that is, holds or lies inside one of ``inputs``."""
        _refuse_inputs(self.path, inputs, self.command)

    def still_ours(self, path: Path) -> bool:
        """Whether ``path`` (the old output, moved there by the swap) is what the check found:
        the same inode and, for a folder, still only files the command wrote."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if self.found is None or (st.st_dev, st.st_ino) != self.found[:2]:
            return False
        if not self.folder:
            return (st.st_size, st.st_mtime_ns) == self.found[2:]
        return not _foreign_files(path, self.command, self.written)


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _refuse_inputs(out: Path, inputs: Iterable[Path | None], command: str) -> None:
    real_out = _real(out)
    for path in inputs:
        if path is None:
            continue
        real_in = _real(path)
        if _related(real_out, real_in):
            how = ("is" if real_out == real_in else "holds" if real_out in real_in.parents
                   else "lies inside")
            raise UserError(f"output {out} {how} the input {path} of {command}; write the output "
                            f"somewhere of its own, outside every input")


def _refuse_nnunet_folders(out: Path, nnunet_dataset: bool) -> None:
    """An output never equals or holds an nnU-Net folder or one of its datasets; with
    ``nnunet_dataset`` it may be a dataset folder itself (convert's)."""
    for root in nnunet_folders():
        root = _absolute(root)
        if nnunet_dataset and out.parent == root and out.name.startswith("Dataset"):
            continue
        protected = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
        for folder in protected:
            if out == folder or out in folder.parents:
                raise UserError(f"output {out} would replace {folder} (an nnU-Net folder); "
                                f"choose a folder of its own")


def _refuse_uncreatable(out: Path) -> None:
    ancestor = out.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create {out}: {ancestor} is not a folder; choose a folder of "
                        f"its own")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {out}: {ancestor} is not writable; choose a writable "
                        f"folder")


def _marker_record(folder: Path) -> dict | None:
    try:
        record = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        return None
    return record


def marker_files(folder: Path, command: str) -> set[str] | None:
    """What ``nnunet-xfer <command>`` wrote into ``folder`` by its marker (None: no marker of it).

    A marker may also name paths the command owns whole (``owned``: files, or folders with
    everything below them) while a command that writes in place (the demo) runs.
    """
    record = _marker_record(folder)
    if record is None or record.get("command") != f"nnunet-xfer {command}":
        return None
    files = {str(f) for f in record["files"]}
    owned = [str(f).rstrip("/") for f in record.get("owned", []) if str(f).strip("/")]
    if owned:
        files |= {f for f in listing(folder) if any(f == d or f.startswith(d + "/") for d in owned)}
    return files


def _foreign_files(folder: Path, command: str, written: FolderRecogniser | None) -> list[str]:
    """The files in ``folder`` the command did not write (every file when it wrote none)."""
    present = listing(folder)
    ours = (written or (lambda f: marker_files(f, command)))(folder)
    if ours is None:
        return present or ([OUTPUT_MARKER] if (folder / OUTPUT_MARKER).exists() else [])
    return [f for f in present if f not in ours]


def check_replaceable(out: Path, command: str, overwrite: bool, *,
                      inputs: Iterable[Path | None] = (), folder: bool = True,
                      written: Callable[[Path], object] | None = None,
                      nnunet_dataset: bool = False) -> Claim:
    """The one output guard: may ``nnunet-xfer <command>`` write ``out``? A :class:`Claim` if so.

    Refuses in one line (:class:`UserError`), before any work, an output that breaks the rules of
    the module docstring: one that is, holds or lies inside one of ``inputs``; one that is or
    holds an nnU-Net folder (``nnunet_dataset``: convert's dataset folders excepted); a folder
    that is the current folder or holds it; one that cannot be created; an existing one without
    ``overwrite``; an existing one the command did not write all of. ``folder``: the output is a
    folder (else a file). ``written`` recognises the command's own output: for a file, a
    predicate; for a folder, the set of relative paths it wrote (default: its marker).
    """
    out = _absolute(out)
    _refuse_nnunet_folders(out, nnunet_dataset)
    cwd = _absolute(Path.cwd())
    if out == cwd or out in cwd.parents:
        raise UserError(f"output {out} is the current folder or holds it; give a new "
                        f"{'folder' if folder else 'file'} of its own")
    _refuse_inputs(out, inputs, command)
    _refuse_uncreatable(out)
    if not (out.exists() or out.is_symlink()):
        return Claim(out, command, folder, None, written)
    if not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another "
                        f"{'folder' if folder else 'name'}")
    what = "folder" if folder else "file"
    if out.is_symlink() or out.is_dir() != folder:
        raise UserError(f"--overwrite refused: {out} is not a {what} written by nnunet-xfer "
                        f"{command}; remove it yourself or choose another {what}")
    if folder:
        foreign = _foreign_files(out, command, written)
        if foreign and (written or (lambda f: marker_files(f, command)))(out) is None:
            raise UserError(f"--overwrite refused: {out} was not written by nnunet-xfer {command} "
                            f"(it holds {shown(foreign)}); move it or choose another folder")
        if foreign:
            raise UserError(f"--overwrite refused: {out} holds files nnunet-xfer {command} did "
                            f"not write ({shown(foreign)}); move them or choose another folder")
    elif written is None or not written(out):
        raise UserError(f"--overwrite refused: {out} was not written by nnunet-xfer {command}; "
                        f"move it or choose another name")
    return Claim(out, command, folder, _identity(out), written)


# ---------------------------------------------------------------- the race-free final step
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_renameat2_fn: list = []


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where the system or the file system does not offer it."""
    if not _renameat2_fn:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _renameat2_fn.append(fn)
    fn = _renameat2_fn[0]
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if nothing is at ``dst`` (FileExistsError otherwise), atomically."""
    src, dst = Path(src), Path(dst)
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if src.is_dir() and not src.is_symlink():
        os.mkdir(dst)  # FileExistsError if anything is there; then the empty folder is replaced
        try:
            os.rename(src, dst)
        except OSError as e:  # someone put something into it meanwhile: theirs now
            raise FileExistsError(errno.EEXIST, "appeared while renaming", str(dst)) from e
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: the best this file system allows
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _keep_beside(tmp: Path, out: Path) -> Path:
    """Move this run's output ``tmp`` to a visible name beside ``out``; return that name."""
    for k in range(100):
        kept = out.with_name(f"{out.name}.new-{os.getpid()}" + (f"-{k}" if k else ""))
        try:
            rename_noreplace(tmp, kept)
            return kept
        except FileExistsError:
            continue
    return tmp


def _appeared(claim: Claim, tmp: Path) -> UserError:
    kept = _keep_beside(tmp, claim.path)
    what = "changed" if claim.found is not None else "appeared"
    return UserError(f"{claim.path} {what} while nnunet-xfer {claim.command} ran and was kept; "
                     f"this run's output is in {kept}: compare the two and move one away")


def swap_into_place(tmp: Path, claim: Claim) -> Path:
    """Put this run's output ``tmp`` at ``claim.path`` (module docstring, rule 3); return the path.

    Never deletes anything but the output the claim found, checked again after the swap.
    :class:`UserError` when something else is (or has come) there: it stays, and ``tmp`` is
    kept beside it under a visible name.
    """
    tmp, out = Path(tmp), claim.path
    if claim.found is not None:
        try:
            exchanged = _renameat2(tmp, out, _RENAME_EXCHANGE)
        except FileNotFoundError:  # the old output went away meanwhile: as if there was none
            exchanged = False
            claim = Claim(out, claim.command, claim.folder, None, claim.written)
        if exchanged:
            if not claim.still_ours(tmp):  # not what we checked: put it back, untouched
                _renameat2(tmp, out, _RENAME_EXCHANGE)
                raise _appeared(claim, tmp)
            _remove(tmp)
            return out
    if claim.found is not None:  # portable: move the old one aside, check it, then no-replace
        aside = out.with_name(_temp_name(out.name + ".old"))
        try:
            os.rename(out, aside)
        except FileNotFoundError:
            claim = Claim(out, claim.command, claim.folder, None, claim.written)
        else:
            if not claim.still_ours(aside):
                try:
                    rename_noreplace(aside, out)
                except FileExistsError:
                    _keep_beside(aside, out)
                raise _appeared(claim, tmp)
            try:
                rename_noreplace(tmp, out)
            except FileExistsError:
                _remove(aside)  # ours, and due to go; the newcomer stays
                raise _appeared(claim, tmp) from None
            _remove(aside)
            return out
    try:
        rename_noreplace(tmp, out)
    except FileExistsError:
        raise _appeared(claim, tmp) from None
    return out


def remove_owned(claim: Claim) -> None:
    """Delete the output the claim found (after a final check of it), leaving anything else.

    For outputs that are removed rather than replaced (convert's stale folders, the demo's folder
    before it starts again). :class:`UserError` when what is there now is not what was checked.
    """
    if claim.found is None:
        return
    out = claim.path
    aside = out.with_name(_temp_name(out.name + ".old"))
    try:
        os.rename(out, aside)
    except FileNotFoundError:
        return
    if not claim.still_ours(aside):
        try:
            rename_noreplace(aside, out)
        except FileExistsError:
            _keep_beside(aside, out)
        raise UserError(f"{out} changed while nnunet-xfer {claim.command} ran; it was kept, "
                        f"nothing was removed: run the command again")
    _remove(aside)


# ---------------------------------------------------------------- files
def _write_via_temp(dest: Path | Claim, write: Callable[[Path], None]) -> Path:
    path = dest.path if isinstance(dest, Claim) else Path(dest)
    make_folder(path.parent)
    tmp = path.with_name(_temp_name(path.name))
    try:
        write(tmp)
        check_space(tmp)
        if isinstance(dest, Claim):
            swap_into_place(tmp, dest)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path | Claim, data: bytes) -> Path:
    """Write ``data`` to ``path`` (or a claimed output) through a temporary file and a rename."""
    return _write_via_temp(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path | Claim, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` (or a claimed output) through a temporary file."""
    return _write_via_temp(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path | Claim, obj, indent: int = 2, **kwargs) -> Path:
    """``json.dumps(obj)`` written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs))


#: A spreadsheet evaluates a cell that starts with one of these (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise_cell(value):
    """A text cell a spreadsheet would run as a formula, prefixed with ``'``; numbers unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def safe_frame(frame):
    """``frame`` with every text cell and column name passed through :func:`neutralise_cell`."""
    import pandas as pd
    out = frame.copy()
    out.columns = [neutralise_cell(c) for c in out.columns]
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            out.isetitem(i, col.map(neutralise_cell))
    return out


def atomic_write_csv(path: Path | Claim, frame, **kwargs) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given), written atomically.

    The one CSV writer of the package: text cells starting with ``=``, ``+``, ``-``, ``@``, tab
    or carriage return get a leading ``'`` so a spreadsheet shows them instead of running them
    (numbers, negative ones included, stay numbers).
    """
    kwargs.setdefault("index", False)
    safe = safe_frame(frame)
    return _write_via_temp(path, lambda tmp: safe.to_csv(tmp, **kwargs))


def atomic_torch_save(path: Path | Claim, obj) -> Path:
    """``torch.save(obj)`` written atomically."""
    import torch
    return _write_via_temp(path, lambda tmp: torch.save(obj, tmp))


def atomic_group(writers: Mapping[Path, Callable[[Path], None]],
                 claims: Mapping[Path, Claim] | None = None) -> list[Path]:
    """Write several files as one unit: every temporary first, then the renames in the given order.

    Either all files are replaced or (on an error while writing) none is. ``writers`` maps each
    destination to a function that writes the given temporary path; a destination with a claim
    in ``claims`` goes into place by :func:`swap_into_place`.
    """
    claims = {Path(p): c for p, c in (claims or {}).items()}
    temps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            make_folder(path.parent)
            tmp = path.with_name(_temp_name(path.name))
            temps[path] = tmp
            write(tmp)
            check_space(tmp)
        for path, tmp in temps.items():
            if path in claims:
                swap_into_place(tmp, claims[path])
            else:
                os.replace(tmp, path)
    except OSError as e:
        raise _write_error(Path(", ".join(map(str, temps))), e) from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return list(temps)


# ---------------------------------------------------------------- folders
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


def write_marker(folder: Path, command: str, owned: Iterable[str] = ()) -> None:
    """Record every file now in ``folder`` as written by ``nnunet-xfer <command>`` (and, while it
    writes in place, the paths it owns whole: ``owned``, files or folders)."""
    record = {"command": f"nnunet-xfer {command}", "files": listing(folder),
              "written": _dt.datetime.now().isoformat(timespec="seconds")}
    if owned:
        record["owned"] = sorted(owned)
    atomic_write_json(Path(folder) / OUTPUT_MARKER, record)


def add_to_marker(folder: Path, files: list[str]) -> bool:
    """List ``files`` (relative paths) in the marker of an output folder written by another
    command, so that its ``--overwrite`` may replace them with the rest; False without a marker."""
    record = _marker_record(folder)
    if record is None:
        return False
    record["files"] = sorted(set(record["files"]) | set(files))
    atomic_write_json(Path(folder) / OUTPUT_MARKER, record)
    return True


def shown(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, then how many more."""
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


@contextmanager
def owned_output(out: Path | Claim, command: str | None = None, overwrite: bool = False,
                 inputs: Iterable[Path | None] = ()) -> Iterator[Path]:
    """A command's output folder, built in a temporary folder and swapped into place on success.

    ``out`` is the :class:`Claim` the command took before its work (or a path, checked now with
    ``command``, ``overwrite`` and ``inputs``). The new folder's marker lists every file in it; on
    an error nothing of it is left.
    """
    claim = out if isinstance(out, Claim) else check_replaceable(out, command, overwrite,
                                                                 inputs=inputs)
    parent = make_folder(claim.path.parent)
    remove_stale_temporaries(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_name(claim.path.name) + ".", dir=parent))
        tmp.chmod(_FOLDER_MODE & ~_umask())
    except OSError as e:
        raise _write_error(claim.path, e) from None
    try:
        yield tmp
        write_marker(tmp, claim.command)
        check_space(tmp)
        swap_into_place(tmp, claim)
    except OSError as e:
        raise _write_error(claim.path, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def take_folder(claim: Claim, owned: Iterable[str] = ()) -> Path:
    """Make the claimed folder for a command that writes in place (the demo): the old one (which
    the claim found) is removed, the new one created exclusively, with a marker naming the paths
    the command will write there (``owned``). :class:`UserError` if something else took the place
    meanwhile."""
    remove_owned(claim)
    make_folder(claim.path.parent)
    try:
        claim.path.mkdir()
    except FileExistsError:
        raise UserError(f"{claim.path} appeared while nnunet-xfer {claim.command} started and "
                        f"was kept; choose another folder") from None
    except OSError as e:
        raise _write_error(claim.path, e) from None
    write_marker(claim.path, claim.command, owned)
    return claim.path
