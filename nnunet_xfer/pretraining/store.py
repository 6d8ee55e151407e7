"""The pretrained store: one ``<source>.pth`` + ``<source>.json`` per source task (and fold).

Layout (docs/layout.md): ``$nnUNet_results/<Dataset>/nnunet_xfer_pretrained/<plans>__<config>/``,
with the entries of sources that read the target's images per fold under ``fold_<k>/``.
The ``.pth`` holds ``{"network": state_dict, "head": state_dict or None}``: the network's own
parameters under the very keys nnU-Net's network uses (so transfer is key for key), and the task
head separately. It is read with ``torch.load(weights_only=True)``. The ``.json`` beside it is the
record of what produced it, including its provenance (:data:`PROVENANCE_KEYS`), which
:func:`check_entry` enforces before a trainer loads the entry.

One writer at a time: :func:`entry_lock` holds an ``fcntl`` lock on a hidden lock file beside the
entry; the ``.pth`` and ``.json`` are written to hidden temporary names and renamed as one unit.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_xfer import __version__
from nnunet_xfer.atomic import Claim, atomic_group, check_replaceable, make_folder
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DatasetLayout, entry_lock_path, fold_folder_name, record_path

FORMAT = "nnunet_xfer.store/1"
#: ``scope`` of an entry: trained on one fold's training cases, on every case of the target, or
#: on no image of the target at all (natural images, published weights).
SCOPE_FOLD, SCOPE_ALL, SCOPE_EXTERNAL = "fold", "all", "external"
#: What an entry was trained for; recorded in every ``.json`` and checked by :func:`check_entry`.
PROVENANCE_KEYS = ("dataset", "scope", "fold", "case_ids", "plans", "configuration",
                   "plans_digest", "intensity_properties")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def architecture_fingerprint(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> str:
    """Short hash of the (key, shape) list of a network: equal iff the networks are congruent."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(f"{key}:{tuple(state[key].shape)};".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- provenance
def intensity_properties(plans: dict) -> dict:
    """The plans' foreground intensity properties per channel (what CT normalisation uses)."""
    return dict(plans.get("foreground_intensity_properties_per_channel") or {})


def plans_digest(plans: dict, configuration: str) -> str:
    """sha256 of the plans' (resolved) configuration entry and foreground intensity properties.

    It changes when the dataset is re-planned in a way that changes the network, its input
    patch or its normalisation, which makes a pretrained entry stale.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    try:
        cfg = PlansManager(copy.deepcopy(plans)).get_configuration(configuration).configuration
    except (KeyError, RuntimeError) as e:
        raise UserError(f"plans {plans.get('plans_name', '?')} have no configuration "
                        f"{configuration!r} ({e})") from None
    payload = json.dumps({"configuration": cfg, "intensity": intensity_properties(plans)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def provenance(dataset_name: str, plans: dict, configuration: str, *, scope: str,
               fold: int | None, case_ids: list[str]) -> dict:
    """The provenance record of an entry (:data:`PROVENANCE_KEYS`)."""
    return {"dataset": dataset_name, "scope": scope, "fold": fold,
            "case_ids": [str(c) for c in case_ids], "plans": plans.get("plans_name"),
            "configuration": configuration, "plans_digest": plans_digest(plans, configuration),
            "intensity_properties": intensity_properties(plans)}


def entry_provenance(dataset_name: str, plans: str = "nnUNetPlans", configuration: str = "2d", *,
                     scope: str, fold: int | None = None, case_ids=()) -> dict:
    """:func:`provenance` for the plans on disk (``$nnUNet_preprocessed/<Dataset>/<plans>.json``)."""
    path = DatasetLayout(dataset_name).plans_json(plans)
    try:
        plans_dict = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read plans {path} ({type(e).__name__}); run "
                        f"`nnUNetv2_plan_and_preprocess` first") from None
    return provenance(dataset_name, plans_dict, configuration, scope=scope, fold=fold,
                      case_ids=list(case_ids))


def pretrain_command(dataset_name: str, source: str, plans: str, configuration: str, *,
                     fold: int | None = None, scope: str | None = None, data: str | None = None,
                     overwrite: bool = False) -> str:
    """The ``nnunet-xfer pretrain`` command line that (re)creates one store entry."""
    try:
        did = str(DatasetLayout(dataset_name).id)
    except ValueError:
        did = dataset_name
    cmd = f"nnunet-xfer pretrain -d {did} -s {source} -p {plans} -c {configuration}"
    if fold is not None:
        cmd += f" --fold {fold}"
    elif scope == SCOPE_ALL:
        cmd += " --scope all"
    if data:
        cmd += f" --data {data}"
    return cmd + (" --overwrite" if overwrite else "")


@dataclass(frozen=True)
class TrainerEntry:
    """The store entry a trainer loads: where, for which fold (None: shared) and scope."""

    path: Path
    fold: int | None
    scope: str
    #: the ``nnunet-xfer pretrain`` command that writes it
    command: str


def trainer_entry(dataset_name: str, source: str, plans: str, configuration: str,
                  fold: int | str, torchvision: bool = False) -> TrainerEntry:
    """The entry a trainer of ``fold`` loads (the one rule for trainers and their checks).

    Sources that read the target's images: the entry of the trainer's own fold, or with
    ``nnUNet_xfer_pretrain_scope=all`` the entry pretrained on every case. Other sources: the
    shared entry (``torchvision``: the plans' network takes torchvision's published weights, so
    no ``--data`` is needed to write it). One-line :class:`UserError` for a bad scope value or
    fold ``all`` with per-fold entries.
    """
    from nnunet_xfer import settings
    from nnunet_xfer.sources import spec
    s = spec(source)
    entry_fold, scope = None, SCOPE_EXTERNAL
    if s.reads_target_images:
        scope = settings.choice("nnUNet_xfer_pretrain_scope", (SCOPE_FOLD, SCOPE_ALL)) or SCOPE_FOLD
        if scope == SCOPE_FOLD:
            if str(fold) == "all":
                all_cmd = pretrain_command(dataset_name, source, plans, configuration, scope=SCOPE_ALL)
                raise UserError(f"fold 'all' has no per-fold '{source}' entry (its pretraining would "
                                f"see every case); set nnUNet_xfer_pretrain_scope=all to load the "
                                f"entry of `{all_cmd}`")
            entry_fold = int(fold)
    command = pretrain_command(dataset_name, source, plans, configuration, fold=entry_fold,
                               scope=scope)
    if s.needs_user_data and not torchvision:
        command += f" --data FOLDER (FOLDER: {s.data_hint})"
    path = DatasetLayout(dataset_name).store_entry(source, plans, configuration, fold=entry_fold)
    return TrainerEntry(path, entry_fold, scope, command)


def recreate_command(pth: Path, meta: dict, dataset_name: str, plans: dict,
                     configuration: str) -> str:
    """The pretrain command (with ``--overwrite``) that recreates an existing entry, from its record."""
    data = None
    if meta.get("scope") == SCOPE_EXTERNAL and meta.get("data") and not meta.get("weights_file"):
        data = str(meta["data"])
    fold = meta.get("fold") if isinstance(meta.get("fold"), int) else None
    prefix = fold_folder_name("")
    if fold is None and pth.parent.name.startswith(prefix):
        tail = pth.parent.name.removeprefix(prefix)
        fold = int(tail) if tail.isdigit() else None
    return pretrain_command(dataset_name, str(meta.get("source") or pth.stem),
                            str(plans.get("plans_name")), configuration, fold=fold,
                            scope=meta.get("scope"), data=data, overwrite=True)


def read_record(pth: Path) -> dict:
    """The ``.json`` record of an entry ({} when there is none); one-line error when unreadable."""
    path = record_path(pth)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read the record {path} of {Path(pth).name} "
                        f"({type(e).__name__}); recreate the entry with `nnunet-xfer pretrain "
                        f"--overwrite`") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a store record (a JSON object); recreate the entry with "
                        f"`nnunet-xfer pretrain --overwrite`")
    return meta


def check_entry(pth: Path, meta: dict, dataset_name: str, plans: dict, configuration: str,
                fold: int | None = None) -> None:
    """Refuse (one-line :class:`UserError` naming the pretrain command) an entry that is not what
    its record says or was trained for other plans.

    Checked: a record exists; the ``.pth``'s sha256 equals the recorded one; the recorded dataset,
    configuration, plans digest (configuration entry + intensity properties) equal the current
    plans'; and, when ``fold`` is given, that the entry was trained for that fold.
    """
    pth = Path(pth)
    cmd = recreate_command(pth, meta or {}, dataset_name, plans, configuration)
    where = f"pretrained checkpoint {pth}"
    if not meta:
        raise UserError(f"{where} has no record {record_path(pth).name} (it was not written by "
                        f"nnunet-xfer pretrain); recreate it with: {cmd}")
    recorded = meta.get("sha256")
    if not recorded:
        raise UserError(f"{where}: its record holds no sha256; recreate it with: {cmd}")
    if file_sha256(pth) != recorded:
        raise UserError(f"{where} differs from the sha256 in its record (it was modified or "
                        f"replaced after it was written); recreate it with: {cmd}")
    if meta.get("dataset") != dataset_name:
        raise UserError(f"{where} was pretrained for dataset {meta.get('dataset')!r}, not "
                        f"{dataset_name}; recreate it with: {cmd}")
    if meta.get("configuration") != configuration:
        raise UserError(f"{where} was pretrained for configuration {meta.get('configuration')!r}, "
                        f"not {configuration!r}; recreate it with: {cmd}")
    if not meta.get("plans_digest"):
        raise UserError(f"{where}: its record holds no plans digest (written by an older "
                        f"nnunet-xfer), so its plans cannot be checked; recreate it with: {cmd}")
    if meta["plans_digest"] != plans_digest(plans, configuration):
        raise UserError(f"{where} was pretrained for other plans: {dataset_name} was re-planned "
                        f"since (configuration or intensity properties changed); recreate it "
                        f"with: {cmd}")
    if fold is not None and meta.get("fold") != fold:
        raise UserError(f"{where} was pretrained for fold {meta.get('fold')}, not fold {fold}; "
                        f"recreate it with: {cmd}")


# ---------------------------------------------------------------- one writer at a time
_HELD: dict[str, int] = {}


@contextmanager
def entry_lock(pth: Path) -> Iterator[Path]:
    """Hold the lock of one store entry for the duration of the block (re-entrant in a process).

    A second process that wants the same entry is refused in one line naming the first one's pid.
    The lock file stays (removing it would race); it is hidden and empty of meaning once unlocked.
    """
    lock = entry_lock_path(pth)
    make_folder(lock.parent)
    key = os.path.realpath(lock)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot create the lock file {lock}: {e.strerror}; choose a writable "
                        f"$nnUNet_results") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{pth} is being written by another nnunet-xfer pretrain (pid {holder}); "
                            f"wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield lock
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def is_our_entry(pth: Path) -> bool:
    """True when ``pth`` has a record written by the store (so ``--overwrite`` may replace it)."""
    try:
        meta = read_record(pth)
    except UserError:
        return False
    return meta.get("format") == FORMAT and meta.get("file") == Path(pth).name


def claim_entry(pth: Path, overwrite: bool, inputs=()) -> Claim:
    """The output guard's claim on a store entry (:func:`nnunet_xfer.atomic.check_replaceable`):
    an existing ``.pth`` is replaced only with ``overwrite`` and only when the store wrote it
    (:func:`is_our_entry`)."""
    return check_replaceable(pth, "pretrain", overwrite, folder=False, written=is_our_entry,
                             inputs=inputs)


def save_entry(pth: Path, network_state: Mapping[str, torch.Tensor],
               head_state: Mapping[str, torch.Tensor] | None, metadata: dict,
               overwrite: bool = False, claim: Claim | None = None) -> Path:
    """Write ``pth`` and its ``.json`` as one unit under the entry's lock.

    ``metadata`` should hold ``source``, ``data``, ``iterations``, ``final_loss``, ``task_metric``
    and the provenance (:func:`provenance`); versions, the architecture fingerprint and the sha256
    of the written ``.pth`` are added here. An existing entry is replaced only with ``overwrite``
    and only when the store wrote it; ``claim``: the one taken when the run started (what is at
    ``pth`` now must still be what it found).
    """
    pth = Path(pth)
    with entry_lock(pth):
        claim = claim or claim_entry(pth, overwrite)
        payload = {"format": FORMAT,
                   "network": {k: v.detach().cpu() for k, v in network_state.items()},
                   "head": None if head_state is None else
                   {k: v.detach().cpu() for k, v in head_state.items()}}
        record = dict(metadata)
        record.update({
            "format": FORMAT,
            "architecture_fingerprint": architecture_fingerprint(network_state),
            "n_tensors": len(network_state),
            "package_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "file": pth.name,
        })

        def write_pth(tmp: Path) -> None:
            torch.save(payload, tmp)
            record["sha256"] = file_sha256(tmp)  # of the very bytes renamed into place

        def write_json(tmp: Path) -> None:
            tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")

        atomic_group({pth: write_pth, record_path(pth): write_json}, claims={pth: claim})
    return pth


def restricted_load(path: Path):
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain types only, never code.

    torch's own warnings (e.g. about a foreign pickle protocol) are silenced so that the caller's
    one-line error is all the user sees.
    """
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no detail"


def load_entry(pth: Path) -> tuple[dict, dict | None, dict]:
    """(network state, head state or None, metadata) of a store entry, loaded safely.

    A plain state dict (a file from elsewhere) is accepted as the network part; anything that is
    not tensors and plain types (a hostile pickle) is refused by torch's restricted unpickler.
    """
    pth = Path(pth)
    if not pth.is_file():
        raise UserError(f"pretrained checkpoint {pth} not found")
    try:
        obj = restricted_load(pth)
    except Exception as e:  # truncated/corrupt file or unsafe pickle
        raise UserError(f"cannot read pretrained checkpoint {pth} ({type(e).__name__}: "
                        f"{_first_line(e)}); it is truncated, corrupt or not ours: recreate it "
                        f"with `nnunet-xfer pretrain --overwrite`") from None
    meta = read_record(pth)
    if isinstance(obj, dict) and "network" in obj and isinstance(obj["network"], dict):
        head = obj.get("head")
        return dict(obj["network"]), (dict(head) if isinstance(head, dict) and head else None), meta
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), None, meta
    raise UserError(f"{pth} is not a state dict or an nnunet_xfer store entry")


def entry_path(dataset_name: str, source: str, plans: str = "nnUNetPlans",
               configuration: str = "2d", fold: int | None = None) -> Path:
    """Where the store entry of ``source`` for these plans (and fold) lives (docs/layout.md)."""
    return DatasetLayout(dataset_name).store_entry(source, plans, configuration, fold=fold)
