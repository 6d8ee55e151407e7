"""Open an nnU-Net checkpoint with torch's restricted unpickler: the one place that does it.

nnU-Net loads its checkpoints with ``torch.load(weights_only=False)``: a planted file would run
any code its pickle names. Everything of ours that hands a checkpoint to nnU-Net (``experiment``'s
``--c`` / ``--val``, the ``Xfer*`` trainers' ``load_checkpoint`` under plain ``nnUNetv2_train``,
``nnUNetv2_predict`` on an ``Xfer*`` run through the start-up hook) or reads one itself
(``measure``'s predictor) first opens it here with
``weights_only=True``, admitting only the plain types nnU-Net's ``save_checkpoint`` writes besides
tensors and dicts: numpy scalars (the logged losses and Dice values are ``np.float32``) and their
dtypes. ``torch.device`` (in ``init_args``) and ``OrderedDict`` are admitted by torch itself.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_xfer.errors import UserError

#: What a refusal of a run's own checkpoint adds: the file is not needed, training starts again.
CHECKPOINT_ADVICE = "; if you did not put it there, delete it (the fold then trains from the start)"


def _numpy_globals() -> list:
    """numpy's scalar constructor, ``np.dtype`` and the dtype classes of plain numbers."""
    import numpy as np
    try:
        scalar = np._core.multiarray.scalar  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        scalar = np.core.multiarray.scalar
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
             np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
             np.complex128)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds} - {np.dtype}]


def plain_numbers(value):
    """``value`` with every numpy scalar inside its lists, tuples and dicts made a Python number.

    nnU-Net's training log holds one numpy scalar per epoch and metric; torch's restricted
    unpickler rebuilds each through a call it checks in Python: a 512² checkpoint with a
    1000-epoch log opened in 0.40 s that way and in 0.12 s holding Python numbers
    (docs/benchmarks.md). The values are the same (a float32 widens to a float exactly).
    """
    import numpy as np
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_numbers(v) for v in value)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    return value


def _reason(error: Exception) -> str:
    """The line of torch's multi-line refusal that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    key = next((line for line in lines if "GLOBAL" in line or "global" in line
                or "Unsupported" in line), None)
    if key is None:
        key = lines[0] if lines else type(error).__name__
        if isinstance(error, (OSError, EOFError, RuntimeError)) or "zip" in key.lower():
            key = f"truncated or not a torch file: {key}"
    return key.removeprefix("WeightsUnpickler error: ")[:200]


def open_nnunet_checkpoint(path: Path, advice: str = "", mmap: bool = False) -> dict:
    """Load ``path`` with ``weights_only=True`` (numpy scalars admitted); return the checkpoint.

    :class:`UserError` in one line when the file is not a checkpoint this unpickler can open
    (planted code, a truncated write, another format): it will not be handed to nnU-Net.
    ``mmap``: map the tensors instead of reading them (torch's zip format; an older file is read
    whole), so that a caller that needs only ``network_weights`` never reads the optimizer
    state, which is as large. The restricted unpickler checks the whole pickle either way.
    """
    import warnings

    import torch
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on the way
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not (mmap and "mmap" in str(e)):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not a plain nnU-Net checkpoint
        raise UserError(f"{path} will not be loaded: it is not a plain nnU-Net checkpoint "
                        f"({_reason(e)}){advice}") from None
    if not isinstance(obj, dict) or "network_weights" not in obj:
        raise UserError(f"{path} will not be loaded: it holds no nnU-Net checkpoint "
                        f"(no network_weights){advice}")
    return obj


def _is_xfer_run(model_folder: Path) -> bool:
    """Whether a model folder ``<Trainer>__<Plans>__<config>`` is a run of an ``Xfer*`` trainer."""
    from nnunet_xfer.layout import parse_run_folder_name
    parsed = parse_run_folder_name(Path(model_folder).resolve().name)
    return parsed is not None and parsed[0].startswith("Xfer")


def guard_predictor(module) -> None:
    """Make ``module.nnUNetPredictor`` open an ``Xfer*`` run's checkpoints safely before nnU-Net
    unpickles them (the start-up hook calls this when nnU-Net's predictor module is imported).

    ``initialize_from_trained_model_folder`` — what ``nnUNetv2_predict``, its Python API and
    ``nnUNetv2_predict_from_modelfolder`` all go through — first opens every fold's checkpoint
    with :func:`open_nnunet_checkpoint`; a file it refuses stops the process with one line
    (``SystemExit``), before nnU-Net's ``torch.load(weights_only=False)``. Runs of other trainers
    are left to nnU-Net as they are.
    """
    import functools
    cls = getattr(module, "nnUNetPredictor", None)
    original = getattr(cls, "initialize_from_trained_model_folder", None)
    if original is None or getattr(original, "_nnunet_xfer_guarded", False):
        return

    @functools.wraps(original)
    def initialize_from_trained_model_folder(self, model_training_output_dir, use_folds,
                                             checkpoint_name="checkpoint_final.pth"):
        if _is_xfer_run(Path(model_training_output_dir)):
            if use_folds is None:  # detected once, here, and handed on
                use_folds = cls.auto_detect_available_folds(model_training_output_dir,
                                                            checkpoint_name)
            for fold in [use_folds] if isinstance(use_folds, str) else use_folds:
                path = Path(model_training_output_dir) / f"fold_{fold}" / checkpoint_name
                if not path.is_file():
                    continue  # nnU-Net names the missing file itself
                try:
                    open_nnunet_checkpoint(path)
                except UserError as e:
                    raise SystemExit(f"nnunet_xfer: {e}") from None
        return original(self, model_training_output_dir, use_folds, checkpoint_name)

    initialize_from_trained_model_folder._nnunet_xfer_guarded = True
    cls.initialize_from_trained_model_folder = initialize_from_trained_model_folder
