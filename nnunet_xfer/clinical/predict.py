"""Run a trained 2D nnU-Net model on one CT slice in-process, through nnU-Net's own predictor.

The model is ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_<k>/checkpoint_final.pth``
(the fold ensemble by default, as ``nnUNetv2_predict`` does). Checkpoints are opened with torch's
restricted unpickler (``weights_only=True``; numpy scalars admitted), never handed to nnU-Net's
``weights_only=False`` loader, and refused in one line when they were trained for other plans or
another configuration than the run folder says. Each fold's logits are kept so the gallery can
show how far each fold model agrees with the ensemble (nnU-Net averages the same logits).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image
from nnunet_xfer.nnunet_checkpoint import open_nnunet_checkpoint
from nnunet_xfer.evaluation.metrics import dice
from nnunet_xfer.layout import (CHECKPOINT_FINAL, DATASET_JSON, DEFAULT_CONFIGURATION,
                                DEFAULT_PLANS, RUN_PLANS_JSON,
                                DatasetLayout, fold_folder_name)

#: The run folder's copy of the plans (nnU-Net writes it beside the folds).


def as_image(slice_image: "Image | sitk.Image") -> Image:
    """An :class:`~nnunet_xfer.imaging.Image` of a SimpleITK slice (an Image passes through)."""
    if isinstance(slice_image, Image):
        return slice_image
    return Image.from_sitk(slice_image, Path("(slice)"))


@dataclass
class SlicePrediction:
    """The ensemble's muscle mask of one slice, each fold's mask and its Dice against the ensemble."""

    mask: np.ndarray
    fold_masks: dict[str, np.ndarray] = field(default_factory=dict)
    fold_dice: dict[str, float] = field(default_factory=dict)


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint opened with ``torch.load(weights_only=True)``; one-line refusal."""
    obj = open_nnunet_checkpoint(Path(path))
    if not {"init_args", "trainer_name"} <= set(obj):
        raise UserError(f"{path} will not be loaded: it holds no nnU-Net checkpoint "
                        f"(no init_args / trainer_name)")
    return obj


def resolve_device(device: str | None):
    """``torch.device`` from ``cuda``/``cpu``/``mps``/``cuda:1``; default cuda when available."""
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cuda, cpu or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")
    if dev.type not in ("cuda", "cpu", "mps"):
        raise UserError(f"--device {device!r}: use cuda, cpu or mps")
    return dev


def find_trainer_class(name: str):
    """nnU-Net's trainer class ``name``: nnU-Net's own folder, ``$nnUNet_extTrainer``, then ours.

    Our trainers are found without ``nnUNet_extTrainer`` being set, so ``measure`` works
    right after ``pip install``.
    """
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_xfer.trainers import trainer_folder
    # nnU-Net imports every trainer module it has while searching; some import third-party
    # packages (timm) whose deprecation warnings would only clutter the command's output
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return recursive_find_trainer_class_by_name(name)
        except (RuntimeError, AssertionError):
            pass
        folder = str(trainer_folder())
        found = recursive_find_python_class(folder, name, None, base_folder=folder,
                                            cleanup_imports_from_base_folder=True)
    if found is None:
        raise UserError(f"trainer {name} is unknown to nnU-Net and nnunet_xfer; check -tr (or set "
                        f"nnUNet_extTrainer to the folder of your own trainer)")
    return found


def _runs_listing(layout: DatasetLayout, configuration: str) -> str:
    runs = [f.name for f, _t, _p in layout.run_folders(configuration)]
    return ", ".join(runs[:8]) + (" …" if len(runs) > 8 else "") if runs else "none"


def available_folds(run: Path, checkpoint: str = CHECKPOINT_FINAL) -> list[str]:
    """Folds of a run folder with a finished checkpoint (``fold_all`` left out, as nnU-Net does)."""
    folds = []
    for p in sorted(run.glob("fold_*")):
        k = p.name.removeprefix("fold_")
        if k != "all" and (p / checkpoint).is_file():
            folds.append(k)
    return sorted(folds, key=lambda k: int(k) if k.isdigit() else 10 ** 6)


class SlicePredictor:
    """A trained 2D model (one fold or the fold ensemble) that segments single CT slices.

    ``dataset`` id or name, ``trainer``, ``plans`` and ``configuration`` name the run folder as
    ``nnUNetv2_predict -d -tr -p -c`` does; ``folds`` None means every finished fold.
    """

    def __init__(self, dataset: str | int, trainer: str, plans: str = DEFAULT_PLANS,
                 configuration: str = DEFAULT_CONFIGURATION, folds: list[str | int] | None = None,
                 device: str | None = None, checkpoint: str = CHECKPOINT_FINAL):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        from batchgenerators.utilities.file_and_folder_operations import load_json

        layout = DatasetLayout.of(dataset)
        run = layout.run_folder(trainer, plans, configuration)
        self.run = run
        if not run.is_dir():
            raise UserError(f"no trained model {run.name} in {layout.results}; runs there: "
                            f"{_runs_listing(layout, configuration)}; check -d/-tr/-p/-c")
        folds = [str(f) for f in folds] if folds else available_folds(run, checkpoint)
        if not folds:
            raise UserError(f"{run} holds no finished fold ({checkpoint}); train a fold first or "
                            f"pass -f")
        for f in folds:
            if not (run / fold_folder_name(f) / checkpoint).is_file():
                raise UserError(f"fold {f} of {run.name} has no {checkpoint}; train it or leave it "
                                f"out of -f (finished folds: {', '.join(available_folds(run, checkpoint)) or 'none'})")
        for name in (RUN_PLANS_JSON, DATASET_JSON):
            if not (run / name).is_file():
                raise UserError(f"{run / name} is missing; the run folder is incomplete")
        plans_dict = load_json(str(run / RUN_PLANS_JSON))
        dataset_json = load_json(str(run / DATASET_JSON))
        if plans_dict.get("plans_name") != plans:
            raise UserError(f"{run / RUN_PLANS_JSON} holds plans {plans_dict.get('plans_name')!r}, not "
                            f"{plans!r}; the run folder was copied or renamed")
        parameters, mirror_axes = [], None
        for i, f in enumerate(folds):
            path = run / fold_folder_name(f) / checkpoint
            ckpt = load_checkpoint(path)
            init = ckpt["init_args"]
            ck_plans = init.get("plans", {}) if isinstance(init, dict) else {}
            if ckpt["trainer_name"] != trainer:
                raise UserError(f"{path} was trained by {ckpt['trainer_name']}, not {trainer}; "
                                f"the run folder was mixed up")
            if init.get("configuration") != configuration:
                raise UserError(f"{path} was trained for configuration {init.get('configuration')!r}, "
                                f"not {configuration!r}")
            if (ck_plans.get("plans_name") != plans
                    or ck_plans.get("configurations", {}).get(configuration)
                    != plans_dict.get("configurations", {}).get(configuration)):
                raise UserError(f"{path} was trained on other plans ({ck_plans.get('plans_name')!r}, "
                                f"configuration {configuration!r} differs from {run / RUN_PLANS_JSON}); "
                                f"retrain it with these plans or use the run of its own plans")
            if i == 0:
                mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
            parameters.append(ckpt["network_weights"])

        plans_manager = PlansManager(plans_dict)
        if plans_manager.image_reader_writer_class.__name__ != "SimpleITKIO":
            raise UserError(f"plans {plans} read images with {plans_manager.image_reader_writer_class.__name__}; "
                            f"measure supports models whose images were read with SimpleITKIO "
                            f"(NIfTI, as `nnunet-xfer convert` writes)")
        cm = plans_manager.get_configuration(configuration)
        if len(cm.patch_size) != 2:
            raise UserError(f"configuration {configuration} of {run.name} is 3D; measure runs 2D "
                            f"models on the L3 slice (train a 2d configuration)")
        n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
        if n_in != 1:
            raise UserError(f"{run.name} takes {n_in} input channels; measure gives it one CT slice")
        self.label_manager = plans_manager.get_label_manager(dataset_json)
        self.muscle_label = self._muscle_label(dataset_json, run)
        trainer_class = find_trainer_class(trainer)
        n_out = self.label_manager.num_segmentation_heads
        build = trainer_class.build_network_architecture
        if "plans_manager" in inspect.signature(build).parameters:
            network = build(plans_manager, cm, n_in, n_out, enable_deep_supervision=False)
        else:  # nnU-Net's older signature, still accepted by its own predictor
            network = build(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                            cm.network_arch_init_kwargs_req_import, n_in, n_out,
                            enable_deep_supervision=False)
        for f, params in zip(folds, parameters):
            try:
                network.load_state_dict(params)
            except RuntimeError as e:
                raise UserError(f"fold {f} of {run.name} does not fit the network of plans {plans} "
                                f"({str(e).splitlines()[0][:120]}); it was trained on other plans")
        self.device = resolve_device(device)
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                        perform_everything_on_device=self.device.type == "cuda",
                                        device=self.device, verbose=False, allow_tqdm=False)
            predictor.manual_initialization(network.to(self.device), plans_manager, cm, parameters,
                                            dataset_json, trainer, mirror_axes)
        self.predictor = predictor
        self.folds = folds
        self.parameters = parameters
        self.plans, self.configuration, self.trainer = plans, configuration, trainer
        self.dataset = layout.name
        self.target_spacing = tuple(float(s) for s in cm.spacing)

    @staticmethod
    def _muscle_label(dataset_json: dict, run: Path) -> int:
        labels = {k: v for k, v in dataset_json.get("labels", {}).items() if k != "background"}
        if "muscle" in labels and isinstance(labels["muscle"], int):
            return labels["muscle"]
        plain = [v for v in labels.values() if isinstance(v, int)]
        if len(plain) == 1:
            return plain[0]
        raise UserError(f"{run / DATASET_JSON} has labels {sorted(labels)}; measure needs one "
                        f"foreground label (or one named 'muscle')")

    @staticmethod
    def nnunet_input(slice_image: "Image | sitk.Image") -> tuple[np.ndarray, dict]:
        """The array and properties nnU-Net's SimpleITKIO gives for a 2D image file (as stored:
        :meth:`predict` gives it the canonical slice)."""
        image = as_image(slice_image)
        arr = np.asarray(image.array, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2D slice, got shape {arr.shape}")
        sx, sy = image.spacing[:2]
        return arr[None, None], {"spacing": [max(sx, sy) * 999, abs(sy), abs(sx)]}

    def predict(self, slice_image: "Image | sitk.Image") -> SlicePrediction:
        """Muscle mask (bool, rows × cols) of one 2D slice from the ensemble, with each fold's.

        The network sees the slice in canonical orientation (``Image.canonical``, as ``convert``
        wrote its training images); the masks come back in the orientation of ``slice_image``.
        """
        canonical, turn = as_image(slice_image).canonical()
        result = self._predict_canonical(canonical)
        if turn.identity:
            return result
        back = {f: np.ascontiguousarray(turn.undo(m)) for f, m in result.fold_masks.items()}
        return SlicePrediction(mask=np.ascontiguousarray(turn.undo(result.mask)), fold_masks=back,
                               fold_dice=result.fold_dice)

    def _predict_canonical(self, slice_image: Image) -> SlicePrediction:
        import torch
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import \
            convert_predicted_logits_to_segmentation_with_correct_shape as to_segmentation
        p = self.predictor
        arr, props = self.nnunet_input(slice_image)
        adapter = PreprocessAdapterFromNpy([arr], [None], [props], [None], p.plans_manager,
                                           p.dataset_json, p.configuration_manager,
                                           num_threads_in_multithreaded=1, verbose=False)
        item = next(adapter)
        data, properties = item["data"], item["data_properties"]
        logits = []
        # inference only: no autograd here, and no global switch left behind for the caller
        with contextlib.redirect_stdout(io.StringIO()), torch.inference_mode():
            for params in self.parameters:
                p.list_of_parameters = [params]
                logits.append(p.predict_logits_from_preprocessed_data(data).cpu())
            p.list_of_parameters = self.parameters
            ensemble = sum(logits[1:], logits[0].clone()) / len(logits)

            def mask_of(lg) -> np.ndarray:
                seg = to_segmentation(lg.clone(), p.plans_manager, p.configuration_manager,
                                      self.label_manager, properties)
                return np.asarray(seg).reshape(arr.shape[2:]) == self.muscle_label

            result = SlicePrediction(mask=mask_of(ensemble))
            if len(logits) > 1:
                for f, lg in zip(self.folds, logits):
                    m = mask_of(lg)
                    result.fold_masks[f] = m
                    result.fold_dice[f] = dice(m, result.mask)
        return result
