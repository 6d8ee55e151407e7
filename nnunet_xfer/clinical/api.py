"""``measure_studies``: CT studies in, muscle measures, QC gallery and viewer files out.

The Python twin of ``nnunet-xfer measure --cases`` (docs/measure.md)::

    from nnunet_xfer import measure_studies
    result = measure_studies("studies.csv", "measures_out", dataset=501,
                             trainer="XferScratchTrainer_n125", l3="auto")
    result.table            # one row per case (failed cases too, with their error)
    result.failed           # {case_id: one-line error}

A case that cannot be measured is reported in one line and the others go on; bad arguments, a
missing model or a missing TotalSegmentator stop before anything is written. The output folder
is built in a temporary folder and renamed into place (``atomic.owned_output``): an interrupted
run leaves nothing half-written.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_xfer.atomic import atomic_write_csv, atomic_write_text, check_replaceable, owned_output
from nnunet_xfer.clinical import l3_auto
from nnunet_xfer.clinical.dicom_seg import write_dicom_seg, write_nifti_mask
from nnunet_xfer.clinical.predict import SlicePredictor
from nnunet_xfer.clinical.qc import gallery_html, overlay_lines, overlay_png, write_png
from nnunet_xfer.clinical.studies import Study, load_study, read_studies
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.imaging import label_file
from nnunet_xfer.evaluation.measures import (MEASURE_KEYS, MUSCLE_HU, check_finite_in_mask,
                                             flag_line, muscle_measures, quality_flags,
                                             read_heights)
from nnunet_xfer.layout import (CHECKPOINT_FINAL, DEFAULT_CONFIGURATION, DEFAULT_PLANS,
                                GALLERY_HTML, MASKS_FOLDER, MEASURES_CSV, QC_FOLDER, SEG_ENDING,
                                SEG_FOLDER)

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

STUDY_COLUMNS = (
    "case_id", "status", "error", "image", "slice_index", "slice_source", "rows", "cols",
    "spacing_row_mm", "spacing_col_mm", "slice_thickness_mm", *MEASURE_KEYS, "muscle_pixels",
    "height_m", "height_source", "sex", "weight_kg", "bmi_kg_m2", "low_smi", "smi_cutoff_cm2_m2",
    "low_smd", "smd_cutoff_hu", "cutoff_source", "fold_dice_min", "fold_dice", "flags",
    "qc_png", "mask_file")


@dataclass
class MeasureResult:
    """What ``measure_studies`` produced: the output folder, its table and the failed cases."""

    out: Path
    table: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)

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


def _measure_one(study: Study, predictor: SlicePredictor, tmp: Path, cutoffs: str | None,
                 model_name: str) -> tuple[dict, bytes]:
    cid = study.case_id
    canonical, turn = study.canonical()  # the network, the measures and the picture see this
    prediction = predictor.predict(canonical)
    values = canonical.array
    check_finite_in_mask(values, prediction.mask, cid, study.spec.image)
    sx, sy = canonical.spacing[:2]
    m = muscle_measures(values, prediction.mask, (sy, sx), study.height_m)
    fold_dice = list(prediction.fold_dice.values())
    flags = quality_flags(values, prediction.mask, m, study.slice_thickness_mm,
                          fold_dice or None) + study.flags
    if flags:
        warn(flag_line(cid, flags))
    bmi = (study.weight_kg / study.height_m ** 2
           if study.weight_kg is not None and study.height_m is not None else math.nan)
    row = {
        "case_id": cid, "status": "ok", "error": "", "image": str(study.spec.image),
        "slice_index": study.slice_index, "slice_source": study.slice_source,
        "rows": values.shape[0], "cols": values.shape[1], "spacing_row_mm": sy,
        "spacing_col_mm": sx, "slice_thickness_mm": study.slice_thickness_mm,
        **{k: m[k] for k in MEASURE_KEYS}, "muscle_pixels": int(prediction.mask.sum()),
        "height_m": study.height_m, "height_source": study.height_source, "sex": study.sex,
        "weight_kg": study.weight_kg, "bmi_kg_m2": bmi,
        "fold_dice_min": min(fold_dice) if fold_dice else math.nan,
        "fold_dice": ";".join(f"{f}:{d:.3f}" for f, d in prediction.fold_dice.items()),
        "flags": ";".join(flags),
    }
    if cutoffs:
        row.update(low_muscle(cutoffs, study.sex, m["smi_cm2_m2"], m["smd_hu"], bmi))
    png = overlay_png(canonical, prediction.mask, overlay_lines(row))
    row["qc_png"] = f"{QC_FOLDER}/{cid}.png"
    row["mask_file"] = (f"{SEG_FOLDER}/{cid}{SEG_ENDING}" if study.dicom is not None
                        else f"{MASKS_FOLDER}/{label_file(cid)}")
    stored = np.ascontiguousarray(turn.undo(prediction.mask))  # back in the input's own geometry
    try:
        write_png(tmp / row["qc_png"], png)
        if study.dicom is not None:
            write_dicom_seg(tmp / row["mask_file"], study.dicom.path, stored, model_name, cid)
        else:
            write_nifti_mask(tmp / row["mask_file"], study.volume, study.slice_index, stored)
    except BaseException:  # a failed case leaves none of its files
        for name in (row["qc_png"], row["mask_file"]):
            (tmp / name).unlink(missing_ok=True)
        raise
    return row, png


def measure_studies(cases: Path, out: Path, dataset: str | int, trainer: str,
                    plans: str = DEFAULT_PLANS, configuration: str = DEFAULT_CONFIGURATION,
                    folds=None, device: str | None = None, l3: str = "manifest",
                    low_smi_cutoffs: str | None = None, heights: Path | None = None,
                    allow_non_hu: bool = False, overwrite: bool = False,
                    checkpoint: str = CHECKPOINT_FINAL,
                    on_error: Callable[[str], None] | None = None) -> MeasureResult:
    """Measure the L3 muscle of every CT study in the manifest ``cases`` with a trained model.

    ``cases``: convert's manifest without a mask column (``case_id,image`` + ``slice_index`` or
    ``vertebra_mask,vertebra_label``; optional ``height_m,sex,weight_kg``). ``dataset``,
    ``trainer``, ``plans``, ``configuration``, ``folds`` (None: every finished fold, ensembled)
    and ``device`` name the model as ``nnUNetv2_predict`` does. ``l3="auto"`` picks L3 with
    TotalSegmentator for cases whose row gives no slice. ``low_smi_cutoffs``: ``prado2008`` or
    ``martin2013`` adds low-SMI verdicts. Writes ``out/`` with ``measures.csv``,
    ``gallery.html``, ``qc/<case>.png`` and per case ``seg/<case>.dcm`` (DICOM input) or
    ``masks/<case>.nii.gz``, each on the input's own grid and in its orientation (the network
    and the measures see the canonical slice, docs/measure.md#orientation). ``on_error`` receives each failed case's one-line message.
    """
    if l3 not in ("manifest", "auto"):
        raise UserError(f"--l3 {l3!r}: use 'auto' (TotalSegmentator) or leave it out (manifest)")
    if low_smi_cutoffs is not None and low_smi_cutoffs not in CUTOFFS:
        raise UserError(f"--low-smi-cutoffs {low_smi_cutoffs!r}: use one of {', '.join(CUTOFFS)}")
    specs = read_studies(Path(cases))
    claim = check_replaceable(out, "measure", overwrite, inputs=[
        cases, heights, *(p for s in specs for p in (s.image, s.mask, s.vertebra_mask))])
    out = claim.path
    height_of = read_heights(Path(heights)) if heights is not None else {}
    if l3 == "auto":
        l3_auto.require_totalseg()
    predictor = SlicePredictor(dataset, trainer, plans, configuration, _parse_folds(folds),
                               device, checkpoint)
    claim.check_inputs([predictor.run])  # the model's folder
    device_name = str(predictor.device)

    def auto(volume):
        return l3_auto.run_totalsegmentator(volume, device_name)

    report = on_error or warn
    model_name = f"{predictor.dataset}/{predictor.run.name} folds {','.join(predictor.folds)}"
    rows, pictures, failed = [], {}, {}
    with owned_output(claim) as tmp:
        # disable=None: a bar on a terminal, none in logs and pipes
        for spec in tqdm(specs, desc="measure", unit="case", disable=None):
            try:
                study = load_study(spec, allow_non_hu, auto if l3 == "auto" else None, height_of)
                row, png = _measure_one(study, predictor, tmp, low_smi_cutoffs, model_name)
                for note in study.notes:
                    warn(f"case {spec.case_id}: {note}")
                pictures[spec.case_id] = png
            except UserError as e:
                message = str(e)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - one case must not stop the others
                first = (str(e).strip().splitlines() or [""])[0][:200]
                message = f"case {spec.case_id}: {type(e).__name__}: {first}"
            else:
                rows.append(row)
                continue
            message = " ".join(message.split())
            failed[spec.case_id] = message
            rows.append({"case_id": spec.case_id, "status": "failed", "error": message,
                         "image": str(spec.image)})
            report(message)
        table = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
        atomic_write_csv(tmp / MEASURES_CSV, table)
        facts = [f"model: {model_name} ({configuration}, {predictor.trainer}), device {device_name}",
                 f"SMA/SMD/SMI on mask pixels within {MUSCLE_HU[0]:g}…{MUSCLE_HU[1]:g} HU; "
                 f"whole-mask values in the *_mask_* columns of {MEASURES_CSV}",
                 f"low-SMI cut-offs: {CUTOFFS[low_smi_cutoffs]['source'] if low_smi_cutoffs else 'none'}",
                 f"written {_dt.datetime.now().isoformat(timespec='seconds')} from {Path(cases).resolve()}"]
        ok_rows = [r for r in rows if r.get("status") == "ok"]
        atomic_write_text(tmp / GALLERY_HTML, gallery_html(
            ok_rows, pictures, failed, "nnunet-xfer measure: quality control", facts))
    return MeasureResult(out=out, table=table, failed=failed)

