"""Where everything lives on disk: the one owner of file and folder names.

A :class:`DatasetLayout` resolves a dataset id or name once and knows every path of that dataset:
its raw, preprocessed and results folders, folds, nested subsets, cases table, the pretrained store
and its entries, nnU-Net's run folders and the evaluation folder. No other module spells a file
name of ours or of nnU-Net's; they ask this module.

Layout (``docs/layout.md`` shows it as a tree)::

    $nnUNet_raw/<Dataset>/            dataset.json, splits_final.json, subsets.json, cases.csv
    $nnUNet_preprocessed/<Dataset>/   <plans>.json, splits_final.json (nnU-Net reads folds here)
    $nnUNet_results/<Dataset>/
        <Trainer>__<Plans>__<config>/fold_<k>/{checkpoint_final.pth, validation/summary.json}
        nnunet_xfer_pretrained/<Plans>__<config>/[fold_<k>/]<source>.{pth,json,resume.pth} (+ hidden .<source>.lock)
        nnunet_xfer_evaluation/       evaluate's default output
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nnunet_xfer import settings
from nnunet_xfer.errors import UserError
# case id ↔ file name is the image reader's (nnunet_xfer.imaging.names); re-exported for paths
from nnunet_xfer.imaging.names import DICOM_ENDING, PNG_ENDING, image_file, label_file  # noqa: F401

# ---------------------------------------------------------------- nnU-Net's own names
DATASET_JSON = "dataset.json"
#: What nnUNetv2_plan_and_preprocess writes beside the plans (``$nnUNet_preprocessed/<Dataset>/``).
FINGERPRINT_JSON = "dataset_fingerprint.json"
GT_SEGMENTATIONS = "gt_segmentations"
SPLITS_FILE = "splits_final.json"
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "2d"
CHECKPOINT_FINAL = "checkpoint_final.pth"
CHECKPOINT_LATEST = "checkpoint_latest.pth"
CHECKPOINT_BEST = "checkpoint_best.pth"
VALIDATION_FOLDER = "validation"
SUMMARY_JSON = "summary.json"
DEBUG_JSON = "debug.json"
RUN_SEPARATOR = "__"
#: nnU-Net's preprocessed image array of a case, by storage: blosc2 (nnU-Net ≥ 2.6), an unpacked
#: numpy array, a compressed numpy archive (older versions).
PREPROCESSED_ENDINGS = {"blosc2": ".b2nd", "npy": ".npy", "npz": ".npz"}

# ---------------------------------------------------------------- ours
SUBSETS_FILE = "subsets.json"
CASES_CSV = "cases.csv"
STORE_FOLDER = "nnunet_xfer_pretrained"
EVALUATION_FOLDER = "nnunet_xfer_evaluation"
SUBSET_RECORD = "xfer_subset.json"
INITIAL_CHECKPOINT = "checkpoint_initial.pth"
ENTRY_SUFFIX = ".pth"
ENTRY_RECORD_SUFFIX = ".json"
RESUME_SUFFIX = ".resume.pth"
#: Lock file a pretrain holds on one store entry while it trains and writes it (hidden).
ENTRY_LOCK_SUFFIX = ".lock"
#: Evaluation outputs.
EVAL_CASES_CSV = "cases.csv"
EVAL_SUMMARY_JSON = "summary.json"
#: Observer-study outputs (``observers`` and ``evaluate --observers``).
OBS_PAIRWISE_CSV = "pairwise.csv"
OBS_WILLIAMS_CSV = "williams.csv"
OBS_STAPLE_CSV = "staple.csv"
OBS_MEASURES_CSV = "measures.csv"
OBS_MEASURES_AGREEMENT_CSV = "measures_agreement.csv"
EVAL_OBSERVERS_WILLIAMS_CSV = "observers_williams.csv"
#: nnU-Net's copy of the plans inside a run folder.
RUN_PLANS_JSON = "plans.json"
#: Lock taken by one experiment runner per dataset.
EXPERIMENT_LOCK = ".nnunet_xfer_experiment.lock"
#: Output of every step ``experiment --run`` executes, appended.
EXPERIMENT_LOG = "nnunet_xfer_experiment.log"
#: The HTML report ``experiment`` writes into the evaluation folder.
REPORT_HTML = "report.html"
#: ``report``: the figures' folder beside ``<name>.html`` (``<name>_files/``).
REPORT_FIGURES_SUFFIX = "_files"


def report_figures_folder(output_html: Path) -> Path:
    """The report's own folder of PNGs: ``<name>_files/`` beside ``<name>.html``."""
    output_html = Path(output_html)
    return output_html.parent / f"{output_html.stem}{REPORT_FIGURES_SUFFIX}"


def report_figure(figures_folder: Path, name: str) -> Path:
    """One figure of a report (``<name>_files/headline.png``)."""
    return Path(figures_folder) / f"{name}{PNG_ENDING}"
#: ``demo -o DIR``: the log of every stage.
DEMO_LOG = "demo.log"
#: The manifest ``phantom`` writes (and ``convert --cases`` reads) in its output folder.
PHANTOM_MANIFEST = "cases.csv"
#: Marker listing what a command wrote into a folder (see ``atomic.check_replaceable``).
OUTPUT_MARKER = ".nnunet_xfer_output.json"
#: Hidden temporary names start with this, so a later run can find and remove leftovers.
TEMP_PREFIX = ".nnunet_xfer_tmp"

# ---------------------------------------------------------------- `measure --cases` output folder
MEASURES_CSV = "measures.csv"
GALLERY_HTML = "gallery.html"
QC_FOLDER = "qc"
MASKS_FOLDER = "masks"
SEG_FOLDER = "seg"
#: ``measure``: the DICOM SR of each DICOM case (``sr/<case>.dcm``).
SR_FOLDER = "sr"
#: ``measure --corrected``: each corrected case's audit (``<case>.json``) and mask
#: (``<case>.nii.gz``), and the ``convert`` manifest of the corrected cases.
CORRECTIONS_FOLDER = "corrections"
CORRECTED_CASES_CSV = "corrected_cases.csv"
#: The ending of a correction's audit (``corrections/<case>.json``).
AUDIT_ENDING = ".json"


def qc_picture(case_id: str) -> str:
    """``measure``: the QC overlay of a case, relative to the output folder (``qc/<case>.png``)."""
    return f"{QC_FOLDER}/{case_id}{PNG_ENDING}"


def measured_mask(case_id: str, dicom: bool) -> str:
    """``measure``: a case's mask, relative to the output folder: ``seg/<case>.dcm`` (DICOM-SEG)
    for DICOM input, else ``masks/<case>.nii.gz``."""
    return f"{SEG_FOLDER}/{case_id}{DICOM_ENDING}" if dicom else f"{MASKS_FOLDER}/{label_file(case_id)}"


def measured_sr(case_id: str) -> str:
    """``measure``: a DICOM case's structured report (``sr/<case>.dcm``)."""
    return f"{SR_FOLDER}/{case_id}{DICOM_ENDING}"


def correction_audit(case_id: str) -> str:
    """``measure --corrected``: a corrected case's audit (``corrections/<case>.json``)."""
    return f"{CORRECTIONS_FOLDER}/{case_id}{AUDIT_ENDING}"


def correction_mask(case_id: str) -> str:
    """``measure --corrected``: a corrected case's mask for ``convert`` (``corrections/<case>.nii.gz``)."""
    return f"{CORRECTIONS_FOLDER}/{label_file(case_id)}"


def run_folder_name(trainer: str, plans: str = DEFAULT_PLANS,
                    configuration: str = DEFAULT_CONFIGURATION) -> str:
    """``<Trainer>__<Plans>__<config>``, nnU-Net's run folder name."""
    return RUN_SEPARATOR.join((trainer, plans, configuration))


def parse_run_folder_name(name: str) -> tuple[str, str, str] | None:
    """(trainer, plans, configuration) of a run folder name, or None if it is not one."""
    parts = name.split(RUN_SEPARATOR)
    if len(parts) < 3 or not all(parts):
        return None
    return parts[0], RUN_SEPARATOR.join(parts[1:-1]), parts[-1]


def fold_folder_name(fold: int | str) -> str:
    """``fold_<k>``."""
    return f"fold_{fold}"


def preprocessed_image(folder: Path, case: str, storage: str) -> Path:
    """nnU-Net's preprocessed image array of ``case`` in ``folder`` (``<case>.b2nd``, ``.npy`` or
    ``.npz``; ``storage`` is a key of :data:`PREPROCESSED_ENDINGS`)."""
    return Path(folder) / f"{case}{PREPROCESSED_ENDINGS[storage]}"


def resume_path(entry: Path) -> Path:
    """The training state kept beside a store entry (``<source>.resume.pth``)."""
    entry = Path(entry)
    return entry.with_name(entry.name.removesuffix(ENTRY_SUFFIX) + RESUME_SUFFIX)


def entry_lock_path(entry: Path) -> Path:
    """The hidden lock file beside a store entry (``.<source>.lock``) that its one writer holds."""
    entry = Path(entry)
    return entry.with_name("." + entry.name.removesuffix(ENTRY_SUFFIX) + ENTRY_LOCK_SUFFIX)


def record_path(entry: Path) -> Path:
    """The ``.json`` record beside a store entry ``.pth``."""
    entry = Path(entry)
    return entry.with_name(entry.name.removesuffix(ENTRY_SUFFIX) + ENTRY_RECORD_SUFFIX)


def resolve_dataset_name(dataset: str | int) -> str:
    """``Dataset501_L3`` from an id (501, ``"501"``) or a full name, as nnU-Net resolves it.

    Looks in the nnU-Net folders named by the environment at call time; one-line
    :class:`UserError` when the id is unknown or ambiguous.
    """
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        return text
    if not text.isdigit():
        raise UserError(f"dataset {text!r} is neither an id (e.g. 501) nor a name (Dataset501_L3)")
    prefix = f"Dataset{int(text):03d}_"
    found = set()
    for var in settings.NNUNET_FOLDERS:
        root = settings.nnunet_folder_or_none(var)
        if root is not None and root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if len(found) != 1:
        what = ("not found: no dataset" if not found
                else f"is ambiguous: several datasets ({', '.join(sorted(found))})")
        raise UserError(f"dataset {int(text)} {what} with id {int(text)} in $nnUNet_raw/"
                        f"$nnUNet_preprocessed/$nnUNet_results; convert it first "
                        f"(`nnunet-xfer convert`), give the full dataset name or fix the folders")
    return found.pop()


@dataclass(frozen=True)
class DatasetLayout:
    """Every path of one dataset. Build it with :meth:`of` (id or name)."""

    name: str

    @classmethod
    def of(cls, dataset: "str | int | DatasetLayout") -> "DatasetLayout":
        """The layout of a dataset id (501), name (Dataset501_L3) or an existing layout."""
        if isinstance(dataset, DatasetLayout):
            return dataset
        return cls(resolve_dataset_name(dataset))

    @property
    def id(self) -> int:
        """The numeric id (501 of Dataset501_L3)."""
        return int(self.name.split("_")[0].removeprefix("Dataset"))

    # ------------------------------------------------------------ nnU-Net's three folders
    @property
    def raw(self) -> Path:
        """``$nnUNet_raw/<Dataset>`` (it may not exist yet)."""
        return settings.nnunet_folder("nnUNet_raw") / self.name

    @property
    def preprocessed(self) -> Path:
        """``$nnUNet_preprocessed/<Dataset>``."""
        return settings.nnunet_folder("nnUNet_preprocessed") / self.name

    @property
    def results(self) -> Path:
        """``$nnUNet_results/<Dataset>``."""
        return settings.nnunet_folder("nnUNet_results") / self.name

    def existing_raw(self) -> Path:
        """The raw folder; one-line error when it was not converted."""
        folder = self.raw
        if not folder.is_dir():
            raise UserError(f"raw dataset {folder} does not exist; run `nnunet-xfer convert` first")
        return folder

    # ------------------------------------------------------------ dataset files
    @property
    def raw_splits(self) -> Path:
        """The folds written by ``convert`` (``$nnUNet_raw/<Dataset>/splits_final.json``)."""
        return self.raw / SPLITS_FILE

    @property
    def preprocessed_splits(self) -> Path:
        """The folds nnU-Net reads (``$nnUNet_preprocessed/<Dataset>/splits_final.json``)."""
        return self.preprocessed / SPLITS_FILE

    @property
    def subsets(self) -> Path:
        """``$nnUNet_raw/<Dataset>/subsets.json``."""
        return self.raw / SUBSETS_FILE

    @property
    def cases_csv(self) -> Path:
        """``$nnUNet_raw/<Dataset>/cases.csv`` (per-case metadata)."""
        return self.raw / CASES_CSV

    @property
    def dataset_json(self) -> Path:
        """``$nnUNet_raw/<Dataset>/dataset.json``."""
        return self.raw / DATASET_JSON

    @property
    def images_dir(self) -> Path:
        """``imagesTr``."""
        return self.raw / "imagesTr"

    @property
    def labels_dir(self) -> Path:
        """``labelsTr``."""
        return self.raw / "labelsTr"

    def plans_json(self, plans: str = DEFAULT_PLANS) -> Path:
        """``$nnUNet_preprocessed/<Dataset>/<plans>.json``."""
        return self.preprocessed / f"{plans}.json"

    def preprocessed_dataset_json(self) -> Path:
        """nnU-Net's copy of dataset.json in the preprocessed folder."""
        return self.preprocessed / DATASET_JSON

    # ------------------------------------------------------------ pretrained store
    def store_dir(self, plans: str = DEFAULT_PLANS, configuration: str = DEFAULT_CONFIGURATION) -> Path:
        """``$nnUNet_results/<Dataset>/nnunet_xfer_pretrained/<plans>__<config>/``."""
        return self.results / STORE_FOLDER / RUN_SEPARATOR.join((plans, configuration))

    def store_entry(self, source: str, plans: str = DEFAULT_PLANS,
                    configuration: str = DEFAULT_CONFIGURATION, fold: int | None = None) -> Path:
        """``<store>/<source>.pth`` (shared by all folds) or ``<store>/fold_<k>/<source>.pth``."""
        folder = self.store_dir(plans, configuration)
        if fold is not None:
            folder = folder / fold_folder_name(fold)
        return folder / f"{source}{ENTRY_SUFFIX}"

    # ------------------------------------------------------------ nnU-Net runs
    def run_folder(self, trainer: str, plans: str = DEFAULT_PLANS,
                   configuration: str = DEFAULT_CONFIGURATION) -> Path:
        """``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>``."""
        return self.results / run_folder_name(trainer, plans, configuration)

    def fold_folder(self, trainer: str, fold: int | str, plans: str = DEFAULT_PLANS,
                    configuration: str = DEFAULT_CONFIGURATION) -> Path:
        """``<run folder>/fold_<k>``."""
        return self.run_folder(trainer, plans, configuration) / fold_folder_name(fold)

    def run_folders(self, configuration: str = DEFAULT_CONFIGURATION) -> list[tuple[Path, str, str]]:
        """(folder, trainer, plans) of every run folder of ``configuration`` in the results folder."""
        found = []
        if self.results.is_dir():
            for folder in sorted(self.results.iterdir()):
                parsed = parse_run_folder_name(folder.name) if folder.is_dir() else None
                if parsed and parsed[2] == configuration:
                    found.append((folder, parsed[0], parsed[1]))
        return found

    @property
    def evaluation_dir(self) -> Path:
        """Default output of ``evaluate``: ``$nnUNet_results/<Dataset>/nnunet_xfer_evaluation``."""
        return self.results / EVALUATION_FOLDER

    @property
    def experiment_lock(self) -> Path:
        """The lock file one ``experiment --run`` holds."""
        return self.results / EXPERIMENT_LOCK

    @property
    def experiment_log(self) -> Path:
        """The log ``experiment --run`` appends every step's output to."""
        return self.results / EXPERIMENT_LOG

    def protected_folders(self) -> list[Path]:
        """Folders no output of ours may equal or contain (evaluate -o, observers -o, …)."""
        folders = []
        for var in settings.NNUNET_FOLDERS:
            root = settings.nnunet_folder_or_none(var)
            if root is not None:
                folders.append(root / self.name)
        return folders


def validation_folder(fold_folder: Path) -> Path:
    """``fold_<k>/validation``."""
    return Path(fold_folder) / VALIDATION_FOLDER


def validation_summary(fold_folder: Path) -> Path:
    """``fold_<k>/validation/summary.json``: present only when nnU-Net finished validating."""
    return validation_folder(fold_folder) / SUMMARY_JSON


def nnunet_folders() -> list[Path]:
    """The nnU-Net folders set in the environment (for output-folder safety checks)."""
    return [p for p in (settings.nnunet_folder_or_none(v) for v in settings.NNUNET_FOLDERS) if p]


def read_cases(dataset: "str | int | Path | DatasetLayout"):
    """Per-case metadata ``cases.csv`` (case_id, height_m, sex, observer, …) with string case ids."""
    import pandas as pd
    folder = Path(dataset) if isinstance(dataset, Path) else DatasetLayout.of(dataset).existing_raw()
    path = folder / CASES_CSV
    if not path.is_file():
        raise UserError(f"{path} is missing; (re-)run `nnunet-xfer convert`")
    return pd.read_csv(path, dtype={"case_id": str})
