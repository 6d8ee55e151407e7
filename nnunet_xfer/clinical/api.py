"""``measure_studies``: CT studies in, muscle measures, QC gallery and viewer files out.

The Python twin of ``nnunet-xfer measure --cases`` (docs/measure.md)::

    from nnunet_xfer import MeasureConfig, measure_studies
    result = measure_studies(MeasureConfig("studies.csv", "measures_out", dataset=501,
                                           trainer="XferScratchTrainer_n125", l3="auto"))
    result.table            # one row per case (failed cases too, with their error)
    result.failed           # {case_id: one-line error}

A row that cannot be measured — a bad value in it, an unreadable image, no L3, ``--l3 auto``
without a usable TotalSegmentator — fails alone, in one line, and the others go on. Bad
arguments, an unreadable manifest, a missing model or a ``--corrected`` folder that does not fit
the manifest stop before anything is written. The output folder is built in a temporary folder
and renamed into place (``atomic.owned_output``): an interrupted run leaves nothing half-written.
``measure_studies`` words its errors for Python (``overwrite=True``, ``l3='auto'``);
:func:`run_measure`, what the command calls, words them as options.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_xfer.atomic import (atomic_write_csv, atomic_write_json, atomic_write_text,
                                 check_replaceable, owned_output)
from nnunet_xfer.clinical import corrections as corr
from nnunet_xfer.clinical.dicom_seg import write_dicom_seg, write_nifti_mask
from nnunet_xfer.clinical.dicom_sr import is_number, write_dicom_sr
from nnunet_xfer.clinical.l3_auto import L3Finder
from nnunet_xfer.clinical.predict import SlicePredictor
from nnunet_xfer.clinical.provenance import PROVENANCE_COLUMNS, Provenance
from nnunet_xfer.clinical.qc import gallery_html, overlay_lines, overlay_png, write_png
from nnunet_xfer.clinical.studies import Study, load_study, read_studies
from nnunet_xfer.dataset_conversion.manifest import BadRow
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.evaluation.measures import (IMAT_HU, MEASURE_KEYS, MUSCLE_HU,
                                             check_finite_in_mask, flag_line, muscle_measures,
                                             quality_flags, read_heights)
from nnunet_xfer.evaluation.metrics import dice
from nnunet_xfer.layout import (CHECKPOINT_FINAL, CORRECTED_CASES_CSV, DEFAULT_CONFIGURATION,
                                DEFAULT_PLANS, GALLERY_HTML, MEASURES_CSV, correction_audit,
                                correction_mask, measured_mask, measured_sr, qc_picture)

#: Published low-muscle cut-offs (docs/measure.md gives the sources and the exact rules).
CUTOFFS = {
    "prado2008": {
        "source": "Prado et al. 2008, Lancet Oncol 9:629-635",
        "smi": {"M": 52.4, "F": 38.5},  # sarcopenic: SMI <= cut-off
        "inclusive": True,
    },
    "martin2013": {
        "source": "Martin et al. 2013, J Clin Oncol 31:1539-1547",
        # sarcopenic: SMI < cut-off; men by BMI (< 25 / >= 25 kg/m²), women regardless of BMI
        "smi": {"M": (43.0, 53.0), "F": (41.0, 41.0)},
        # low muscle attenuation: SMD < cut-off by BMI (< 25 / >= 25), both sexes
        "smd": (41.0, 33.0),
        "inclusive": False,
    },
}

#: Which slice was measured (DICOM UIDs and InstanceNumber; z for every input) and how.
SLICE_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid",
                 "instance_number", "series_choice", "slice_index", "slice_source", "slice_z_mm")
STUDY_COLUMNS = (
    "case_id", "status", "error", "image", *SLICE_COLUMNS, "rows", "cols", "spacing_row_mm",
    "spacing_col_mm", "slice_thickness_mm", *MEASURE_KEYS, "muscle_pixels", "mask_source",
    "corrected_dice", "sma_model_cm2", "height_m", "height_source", "sex", "weight_kg",
    "bmi_kg_m2", "low_smi", "smi_cutoff_cm2_m2", "low_smd", "smd_cutoff_hu", "cutoff_source",
    "fold_dice_min", "fold_dice", "flags", "qc_png", "mask_file", "sr_file", "audit_file",
    *PROVENANCE_COLUMNS)
#: Columns that hold whole numbers (nullable: a failed case has none).
INTEGER_COLUMNS = ("instance_number", "slice_index", "rows", "cols", "muscle_pixels")
#: Columns that hold a verdict (nullable: no verdict without what the rule needs).
VERDICT_COLUMNS = ("low_smi", "low_smd")


@dataclass(frozen=True)
class MeasureConfig:
    """One ``measure --cases`` run: the options of ``nnunet-xfer measure --cases`` (None: the
    default).

    ``cases``: convert's manifest without a mask column (``case_id,image`` + ``slice_index``,
    ``instance_number`` or ``vertebra_mask,vertebra_label``; optional ``series_uid``,
    ``height_m,sex,weight_kg``). ``dataset``, ``trainer``, ``plans``, ``configuration``, ``folds``
    (None: every finished fold, ensembled), ``device`` and ``checkpoint`` name the model as
    ``nnUNetv2_predict`` does; ``mirroring`` False skips nnU-Net's test-time mirroring
    (``--disable_tta``; docs/measure.md gives its measured cost and speed). ``l3="auto"`` picks L3
    with TotalSegmentator for cases whose row gives no slice. ``low_smi_cutoffs``: ``prado2008`` or ``martin2013`` adds low-SMI verdicts.
    ``heights``: a CSV of heights for cases whose row and DICOM give none. ``corrected``: a folder
    of edited masks (:mod:`nnunet_xfer.clinical.corrections`) measured instead of the model's.
    """

    cases: Path
    out: Path
    dataset: str | int
    trainer: str
    plans: str = DEFAULT_PLANS
    configuration: str = DEFAULT_CONFIGURATION
    folds: object = None
    device: str | None = None
    l3: str = "manifest"
    low_smi_cutoffs: str | None = None
    heights: Path | None = None
    allow_non_hu: bool = False
    checkpoint: str = CHECKPOINT_FINAL
    corrected: Path | None = None
    mirroring: bool = True


@dataclass
class MeasureResult:
    """What ``measure_studies`` produced: the output folder, its table, the failed cases (one
    line each), notes on measured cases, and what TotalSegmentator said."""

    out: Path
    table: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def n_cases(self) -> int:
        return len(self.table)

    @property
    def n_failed(self) -> int:
        return len(self.failed)


def low_muscle(cutoffs: str, sex: str | None, smi: float, smd: float,
               bmi: float | None) -> dict:
    """The low-SMI (and, for Martin 2013, low-SMD) verdict of one case under named cut-offs.

    Verdicts are None when what the rule needs (sex, height, BMI for Martin's men) is unknown.
    """
    rule = CUTOFFS[cutoffs]
    out = {"low_smi": None, "smi_cutoff_cm2_m2": math.nan, "low_smd": None,
           "smd_cutoff_hu": math.nan, "cutoff_source": rule["source"]}
    heavy = None if bmi is None or not math.isfinite(bmi) else bmi >= 25.0
    below = (lambda v, c: v <= c) if rule["inclusive"] else (lambda v, c: v < c)
    cut = rule["smi"].get(sex) if sex else None
    if isinstance(cut, tuple):
        cut = cut[0] if cut[0] == cut[1] else (None if heavy is None else cut[int(heavy)])
    if cut is not None:
        out["smi_cutoff_cm2_m2"] = cut
        if math.isfinite(smi):
            out["low_smi"] = bool(below(smi, cut))
    if "smd" in rule and heavy is not None:
        out["smd_cutoff_hu"] = rule["smd"][int(heavy)]
        if math.isfinite(smd):
            out["low_smd"] = bool(below(smd, out["smd_cutoff_hu"]))
    return out


def cutoff_rules(cutoffs: str, row: dict) -> dict[str, str]:
    """Each finding's cut-off in words (ASCII, for the DICOM SR), e.g. ``low SMI: SMI <= 38.5
    cm2/m2 (F)``."""
    rule = CUTOFFS[cutoffs]
    op = "<=" if rule["inclusive"] else "<"
    out = {}
    if is_number(row.get("smi_cutoff_cm2_m2")):
        out["smi"] = f"low SMI: SMI {op} {row['smi_cutoff_cm2_m2']:g} cm2/m2 ({row.get('sex')})"
    if is_number(row.get("smd_cutoff_hu")):
        out["smd"] = f"low SMD: SMD {op} {row['smd_cutoff_hu']:g} HU (BMI {row['bmi_kg_m2']:.1f})"
    return out


def _parse_folds(folds) -> list[str] | None:
    if folds is None:
        return None
    items = [folds] if isinstance(folds, (int, str)) else list(folds)
    out = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                if not (part.isdigit() or part == "all"):
                    raise UserError(f"-f {part!r}: folds are integers (0 1 2 3) or 'all'")
                out.append(part)
    return out or None


# ---------------------------------------------------------------- one case
@dataclass
class _Run:
    """What every case of one run shares."""

    config: MeasureConfig
    predictor: SlicePredictor
    provenance: Provenance
    tmp: Path
    corrected: dict[str, Path]


def _slice_facts(study: Study) -> dict:
    return {"study_instance_uid": study.study_uid, "series_instance_uid": study.series_uid,
            "sop_instance_uid": study.sop_instance_uid, "instance_number": study.instance_number,
            "series_choice": study.series_choice, "slice_index": study.slice_index,
            "slice_source": study.slice_source, "slice_z_mm": study.slice_z_mm}


def _measure_one(study: Study, run: _Run) -> tuple[dict, bytes, list[str]]:
    """Measure one study: its row, its QC picture and notes for the user; its files written."""
    cid, tmp, config = study.case_id, run.tmp, run.config
    canonical, turn = study.canonical()  # the network, the measures and the picture see this
    prediction = run.predictor.predict(canonical)
    values = canonical.array
    sx, sy = canonical.spacing[:2]
    height = study.height_m
    mask, notes, extra = prediction.mask, [], {"mask_source": "model"}
    correction = run.corrected.get(cid)
    if correction is not None:
        stored = corr.read_correction(correction, study)
        mask = np.ascontiguousarray(turn.apply(stored))
        check_finite_in_mask(values, prediction.mask, cid, study.spec.image)
        model_m = muscle_measures(values, prediction.mask, (sy, sx), height)
        extra = {"mask_source": "corrected", "corrected_dice": dice(prediction.mask, mask),
                 "sma_model_cm2": model_m["sma_cm2"]}
    check_finite_in_mask(values, mask, cid, study.spec.image)
    m = muscle_measures(values, mask, (sy, sx), height)
    fold_dice = list(prediction.fold_dice.values())
    flags = quality_flags(values, mask, m, study.slice_thickness_mm, fold_dice or None) \
        + study.flags
    if flags:
        notes.append(flag_line(cid, flags))
    bmi = (study.weight_kg / height ** 2
           if study.weight_kg is not None and height is not None else math.nan)
    row = {
        "case_id": cid, "status": "ok", "error": "", "image": str(study.spec.image),
        **_slice_facts(study), "rows": values.shape[0], "cols": values.shape[1],
        "spacing_row_mm": sy, "spacing_col_mm": sx, "slice_thickness_mm": study.slice_thickness_mm,
        **{k: m[k] for k in MEASURE_KEYS}, "muscle_pixels": int(mask.sum()), **extra,
        "height_m": height, "height_source": study.height_source, "sex": study.sex,
        "weight_kg": study.weight_kg, "bmi_kg_m2": bmi,
        "fold_dice_min": min(fold_dice) if fold_dice else math.nan,
        "fold_dice": ";".join(f"{f}:{d:.3f}" for f, d in prediction.fold_dice.items()),
        "flags": ";".join(flags), **run.provenance.columns(),
    }
    if config.low_smi_cutoffs:
        row.update(low_muscle(config.low_smi_cutoffs, study.sex, m["smi_cm2_m2"], m["smd_hu"],
                              bmi))
    png = overlay_png(canonical, mask, overlay_lines(row))
    row["qc_png"] = qc_picture(cid)
    row["mask_file"] = measured_mask(cid, dicom=study.dicom is not None)
    if study.dicom is not None:
        row["sr_file"] = measured_sr(cid)
    stored = np.ascontiguousarray(turn.undo(mask))  # back in the input's own geometry
    written = [row["qc_png"], row["mask_file"], row.get("sr_file")]
    try:
        write_png(tmp / row["qc_png"], png)
        if study.dicom is not None:
            seg = write_dicom_seg(tmp / row["mask_file"], study.dicom.path, stored,
                                  run.provenance, cid, corrected=correction is not None)
            rules = cutoff_rules(config.low_smi_cutoffs, row) if config.low_smi_cutoffs else {}
            write_dicom_sr(tmp / row["sr_file"], study.dicom.path, seg, row, run.provenance,
                           cid, rules, corrected=correction is not None)
        else:
            write_nifti_mask(tmp / row["mask_file"], study.volume, study.slice_index, stored)
        if correction is not None:
            row["audit_file"] = correction_audit(cid)
            training = correction_mask(cid)
            written += [row["audit_file"], training]
            write_nifti_mask(tmp / training, study.volume, study.slice_index, stored)
            atomic_write_json(tmp / row["audit_file"], corr.audit(
                cid, correction, prediction.mask, mask, model_m, m, sy * sx / 100.0,
                {"measured_at": run.provenance.measured_at, "model": run.provenance.model,
                 "software_version": run.provenance.version, **_slice_facts(study)}))
    except BaseException:  # a failed case leaves none of its files
        for name in filter(None, written):
            (tmp / name).unlink(missing_ok=True)
        raise
    return row, png, notes


def _one_line(cid: str, error: BaseException) -> str:
    """A failed case's message: one line, whole (never cut mid-sentence), naming the case."""
    if isinstance(error, UserError):
        text = str(error)
    else:
        lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
        text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    text = " ".join(text.split())
    return text if text.startswith(f"case {cid}:") else f"case {cid}: {text}"


def _table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
    for col in INTEGER_COLUMNS:
        table[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v))
                               else int(v) for v in table[col]], dtype="Int64")
    for col in VERDICT_COLUMNS:
        table[col] = pd.array([v if isinstance(v, (bool, np.bool_)) else None
                               for v in table[col]], dtype="boolean")
    return table


def _corrected_manifest(rows: list[dict], specs: dict) -> pd.DataFrame:
    """``convert``'s manifest of the corrected cases: image, corrected mask, the slice measured."""
    out = []
    for row in rows:
        if row.get("mask_source") != "corrected":
            continue
        spec = specs[row["case_id"]]
        out.append({"case_id": row["case_id"], "image": str(Path(spec.image).resolve()),
                    "mask": correction_mask(row["case_id"]),
                    "slice_index": row["slice_index"],
                    "series_uid": spec.series_uid or (row["series_instance_uid"]
                                                      if row["series_choice"] not in
                                                      ("", "the only series", "a single file")
                                                      else None),
                    "height_m": row["height_m"], "sex": row["sex"],
                    "weight_kg": row["weight_kg"]})
    table = pd.DataFrame(out, columns=["case_id", "image", "mask", "slice_index", "series_uid",
                                       "height_m", "sex", "weight_kg"])
    table["slice_index"] = table["slice_index"].astype("Int64")
    return table


def run_measure(config: MeasureConfig, *, overwrite: bool = False,
                on_error: Callable[[str], None] | None = None,
                on_note: Callable[[str], None] | None = None,
                words: Callable[[str], str] = str) -> MeasureResult:
    """Measure the L3 muscle of every CT study in ``config.cases`` (errors worded as the
    command's options; :func:`measure_studies` is the Python API).

    Writes ``config.out/`` with ``measures.csv``, ``gallery.html``, ``qc/<case>.png`` and per case
    ``seg/<case>.dcm`` + ``sr/<case>.dcm`` (DICOM input) or ``masks/<case>.nii.gz``; with
    ``config.corrected`` also ``corrections/<case>.json`` + ``.nii.gz`` and
    ``corrected_cases.csv``. ``overwrite`` replaces an earlier ``measure`` output there (nothing
    else). ``on_error`` receives each failed case's one-line message, ``on_note`` each note on a
    measured case (its quality flags in words…); both default to a printed warning line
    (:func:`nnunet_xfer.errors.warn`, which no warnings filter hides) and are also in the result. ``words`` words each failed case's message
    (:func:`measure_studies` gives :func:`api_words`).
    """
    c = config
    if c.l3 not in ("manifest", "auto"):
        raise UserError(f"--l3 {c.l3!r}: use 'auto' (TotalSegmentator) or leave it out (manifest)")
    if c.low_smi_cutoffs is not None and c.low_smi_cutoffs not in CUTOFFS:
        raise UserError(f"--low-smi-cutoffs {c.low_smi_cutoffs!r}: use one of {', '.join(CUTOFFS)}")
    rows_in = read_studies(Path(c.cases))
    specs = {s.case_id: s for s in rows_in if not isinstance(s, BadRow)}
    claim = check_replaceable(c.out, "measure", overwrite, inputs=[
        c.cases, c.heights, c.corrected,
        *(p for s in specs.values() for p in (s.image, s.mask, s.vertebra_mask))])
    out = claim.path
    corrected = (corr.corrected_files(Path(c.corrected), list(specs))
                 if c.corrected is not None else {})
    height_of = read_heights(Path(c.heights)) if c.heights is not None else {}
    predictor = SlicePredictor(c.dataset, c.trainer, c.plans, c.configuration,
                               _parse_folds(c.folds), c.device, c.checkpoint, c.mirroring)
    claim.check_inputs([predictor.run])  # the model's folder
    provenance = Provenance(predictor.dataset, predictor.trainer, predictor.plans,
                            predictor.configuration, tuple(predictor.folds), predictor.mirroring)
    device_name = str(predictor.device)
    notices: list[str] = []

    def notice(line: str) -> None:  # TotalSegmentator's own words reach the user, as it prints them
        notices.append(line)
        tqdm.write(line, file=sys.stderr)
    auto = L3Finder(device_name, notice) if c.l3 == "auto" else None
    hint = "" if auto is not None else ", or pass --l3 auto"

    rows, pictures, failed, notes = [], {}, {}, {}
    with owned_output(claim) as tmp:
        run = _Run(c, predictor, provenance, tmp, corrected)
        # disable=None: a bar on a terminal, none in logs and pipes
        for spec in tqdm(rows_in, desc="measure", unit="case", disable=None):
            cid = spec.case_id
            try:
                if isinstance(spec, BadRow):
                    raise UserError(spec.message)
                study = load_study(spec, c.allow_non_hu, auto, height_of, hint)
                row, png, case_notes = _measure_one(study, run)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one case must not stop the others
                message = words(_one_line(cid, e))
                failed[cid] = message
                rows.append({"case_id": cid, "status": "failed", "error": message,
                             "image": str(spec.image), **provenance.columns()})
                (on_error or warn)(message)
                continue
            rows.append(row)
            pictures[cid] = png
            case_notes = [f"case {cid}: {n}" for n in study.notes] + case_notes
            if case_notes:
                notes[cid] = case_notes
                for n in case_notes:
                    (on_note or warn)(n)
        table = _table(rows)
        atomic_write_csv(tmp / MEASURES_CSV, table)
        if corrected:
            atomic_write_csv(tmp / CORRECTED_CASES_CSV, _corrected_manifest(rows, specs))
        facts = [f"model: {provenance.model} ({predictor.trainer}), device {device_name}, "
                 f"nnunet_xfer {provenance.version}, {provenance.measured_at}",
                 f"SMA/SMD/SMI on mask pixels within {MUSCLE_HU[0]:g}…{MUSCLE_HU[1]:g} HU; "
                 f"IMAT {IMAT_HU[0]:g}…{IMAT_HU[1]:g} HU within the muscle compartment; "
                 f"whole-mask values in the *_mask_* columns of {MEASURES_CSV}",
                 f"low-SMI cut-offs: {CUTOFFS[c.low_smi_cutoffs]['source'] if c.low_smi_cutoffs else 'none'}",
                 f"corrected masks: {len(corrected)} from {Path(c.corrected).resolve()}"
                 if corrected else "corrected masks: none (every mask is the model's)",
                 f"cases from {Path(c.cases).resolve()}"]
        ok_rows = [r for r in rows if r.get("status") == "ok"]
        atomic_write_text(tmp / GALLERY_HTML, gallery_html(
            ok_rows, pictures, failed, "nnunet-xfer measure: quality control", facts))
    return MeasureResult(out=out, table=table, failed=failed, notes=notes, notices=notices)


# ---------------------------------------------------------------- the Python API
#: Option words of the command → the API's parameter words, for errors raised to a caller.
_API_WORDS = [
    (r"pass --overwrite to replace it", "pass overwrite=True to replace it"),
    (r"--overwrite refused", "overwrite=True refused"),
    (r"or pass --l3 auto", "or pass l3='auto'"),
    (r"--l3 auto", "l3='auto'"),
    (r"--l3 ", "l3="),
    (r"--low-smi-cutoffs ", "low_smi_cutoffs="),
    (r"or pass --allow-non-hu", "or pass allow_non_hu=True"),
    (r"--corrected ", "corrected="),
    (r"--device ", "device="),
    (r"check -d/-tr/-p/-c", "check dataset/trainer/plans/configuration"),
    (r"or pass -f\b", "or pass folds"),
    (r"out of -f\b", "out of folds"),
    (r"(?<![\w-])-f ", "folds="),
]


def api_words(message: str) -> str:
    """An error message of the command worded for a Python caller (parameters, not options)."""
    for pattern, words in _API_WORDS:
        message = re.sub(pattern, words, message)
    return message


def measure_studies(config: MeasureConfig, *, overwrite: bool = False,
                    on_error: Callable[[str], None] | None = None,
                    on_note: Callable[[str], None] | None = None) -> MeasureResult:
    """Measure the L3 muscle of every CT study in ``config.cases`` with a trained model.

    ``config``: the options of ``nnunet-xfer measure --cases`` (:class:`MeasureConfig` says what
    each means). Returns a :class:`MeasureResult`: failed cases are in ``result.failed`` (and in
    the table, ``status == "failed"``), notes on measured cases in ``result.notes``,
    TotalSegmentator's own notices in ``result.notices``; each is also printed as it happens (one
    ``warning:`` line on stderr), or given to ``on_error`` / ``on_note``. What stops the whole run
    raises :class:`UserError`, worded for Python (``overwrite=True``, not ``--overwrite``). Output
    as :func:`run_measure`.
    """
    try:
        return run_measure(config, overwrite=overwrite, on_error=on_error, on_note=on_note,
                           words=api_words)
    except UserError as e:
        raise UserError(api_words(str(e))) from None
