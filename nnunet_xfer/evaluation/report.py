"""One self-contained HTML report (PNG figures embedded as base64) from an evaluation folder.

Reads what ``nnunet-xfer evaluate`` wrote (``cases.csv``, ``summary.json``, optionally
``observers_williams.csv``) or an ``nnunet-xfer observers`` folder (``williams.csv``,
``pairwise.csv``, ...). Pieces that are absent are named in the report, never a crash; an empty
evaluation is refused. The PNGs also go into a folder of the report's own beside the HTML,
``<name>_files/``; neither the HTML nor that folder is replaced without ``--overwrite``, and then
only when an earlier report wrote them.
"""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import pandas as pd

from nnunet_xfer.atomic import add_to_marker, atomic_write_text, check_replaceable, owned_output
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import figures
from nnunet_xfer.evaluation.findings import best_group, headline
from nnunet_xfer.evaluation.references import model_groups
from nnunet_xfer.layout import (EVAL_CASES_CSV, EVAL_OBSERVERS_WILLIAMS_CSV, EVAL_SUMMARY_JSON,
                                OBS_MEASURES_AGREEMENT_CSV, OBS_WILLIAMS_CSV, report_figure,
                                report_figures_folder)
from nnunet_xfer.sources import DATA_KINDS, label as source_label

COMMAND = "report"
#: The HTML's generator tag: an existing file without it was not written by this command.
GENERATOR = "nnunet-xfer report"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;
margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
.tablewrap{max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{background:#fff7e0;border-left:4px solid #e0b000;padding:.4em .8em;margin:.6em 0}
.muted{color:#666;font-size:.9em}
.headline{background:#eef5ff;border-left:4px solid #3a78c2;padding:.5em .9em;margin:.8em 0}
"""

#: The files of an evaluation or observer-study folder a report reads (its inputs).
_INPUTS = frozenset({EVAL_CASES_CSV, EVAL_SUMMARY_JSON, EVAL_OBSERVERS_WILLIAMS_CSV,
                     OBS_WILLIAMS_CSV, OBS_MEASURES_AGREEMENT_CSV})
_WI_LABELS = {"dice": "1 − Dice", "rms_dta_mm": "RMS DTA"}


def _table(df: pd.DataFrame) -> str:
    return ('<div class="tablewrap">'
            + df.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.3g}", border=0,
                         escape=True) + "</div>")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _fmt(stats: dict | None, center: str) -> str:
    """``mean ± sd`` or ``median [q1, q3]`` of a stats dict (``–`` when empty)."""
    if not stats or not stats.get("n"):
        return "–"
    if center == "mean":
        sd = stats.get("sd")
        return f"{stats['mean']:.3g} ± {sd:.2g}" if sd is not None else f"{stats['mean']:.3g}"
    return f"{stats['median']:.3g} [{stats['q1']:.3g}, {stats['q3']:.3g}]"


def _agreement_text(a: dict | None) -> tuple[str, str]:
    """(ICC(2,1), bias [limits of agreement]) cells from an agreement dict."""
    if not a or "bias" not in a:
        return "–", "–"
    def num(v, fmt: str) -> str:
        return "–" if v is None or v != v else format(v, fmt)  # None or NaN
    bias = (f"{num(a['bias'], '.3g')} [{num(a.get('loa_low'), '.3g')}, "
            f"{num(a.get('loa_high'), '.3g')}]")
    return num(a.get("icc_2_1"), ".3f"), bias


def _n_text(g: dict) -> str:
    if g.get("reference"):
        return "–"  # learned from no annotated slice: not a point of the curve
    return f"{g['n']:g}" if isinstance(g["n"], (int, float)) else str(g["n"])


def _vs_reference_text(g: dict) -> tuple[str, str]:
    """(Δ Dice vs the threshold [95% CI], beats it: yes/no) of a model group; ``–`` for the
    reference row itself or without a comparison."""
    vs = (g.get("vs_reference") or {}).get("threshold")
    if g.get("reference") or not vs:
        return "–", "–"
    d = vs.get("dice") or {}
    if not d.get("n"):
        return "–", "–"
    interval = (f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                if d.get("ci_low") is not None and d["ci_low"] == d["ci_low"] else "")
    return f"{d['mean']:+.3f}{interval}", "yes" if vs.get("beats") else "no"


def _missing_text(g: dict) -> str:
    parts = [f"{k} {what}" for k, what in ((g.get("n_missing_folds", 0), "fold(s)"),
                                           (g.get("n_missing_predictions", 0), "case(s)")) if k]
    return ", ".join(parts) or "–"


def folds_text(folds) -> str:
    """A fold list as a reader takes it: ``fold 0`` (never a bare ``0``, read as a count),
    ``folds 0, 1, 2``; ``–`` when empty."""
    folds = [str(f) for f in folds or []]
    if not folds:
        return "–"
    return f"fold {folds[0]}" if len(folds) == 1 else f"folds {', '.join(folds)}"


def summary_table(groups: list[dict]) -> pd.DataFrame:
    """Segmentation per source × size of summary.json, formatted for reading (the muscle measures
    and provenance of the same rows: :func:`measures_table`; two tables so that both fit the
    page)."""
    rows = []
    for g in groups:
        m = g["metrics"]
        vs_dice, beats = _vs_reference_text(g)
        rows.append({
            "source": source_label(g["source"]), "n": _n_text(g), "size": g["size_tag"],
            "cases": g["n_cases"], "failed": g["n_failed"], "missing": _missing_text(g),
            "Dice mean ± SD": _fmt(m.get("dice"), "mean"),
            "Dice median [IQR]": _fmt(m.get("dice"), "median"),
            "RMS DTA mm mean ± SD": _fmt(m.get("rms_dta_mm"), "mean"),
            "RMS DTA median [IQR]": _fmt(m.get("rms_dta_mm"), "median"),
            "HD95 mm": _fmt(m.get("hd95_mm"), "median"), "NSD 2 mm": _fmt(m.get("nsd"), "mean"),
            "Δ Dice vs threshold [95% CI]": vs_dice, "beats threshold": beats,
        })
    return pd.DataFrame(rows)


def measures_table(groups: list[dict]) -> pd.DataFrame:
    """SMA/SMD agreement and provenance (plans, folds, pretraining, schedule) per source × size."""
    rows = []
    for g in groups:
        sma_icc, sma_ba = _agreement_text(g.get("agreement", {}).get("sma_cm2"))
        smd_icc, smd_ba = _agreement_text(g.get("agreement", {}).get("smd_hu"))
        seen = g.get("pretraining_images_per_fold") or []
        rows.append({
            "source": source_label(g["source"]), "n": _n_text(g), "size": g["size_tag"],
            "SMA ICC": sma_icc, "SMA bias [LoA] cm²": sma_ba,
            "SMD ICC": smd_icc, "SMD bias [LoA] HU": smd_ba,
            "plans": g["plans"], "folds": folds_text(g["folds"]),
            "pretraining data": "; ".join(DATA_KINDS.get(k, k) for k in
                                          g.get("pretraining_data_kinds") or []) or "–",
            "pretraining images / fold": "–" if not seen else "–".join(
                str(v) for v in sorted({min(seen), max(seen)})),
            "validation cases in pretraining": g.get("n_in_pretraining", 0)
            if not g.get("n_pretraining_unknown") else f"{g.get('n_in_pretraining', 0)} "
            f"(+{g['n_pretraining_unknown']} unknown)",
            "schedule": g.get("explicit_schedule") or "default",
        })
    return pd.DataFrame(rows)


def _group_rows(cases: pd.DataFrame, g: dict) -> pd.DataFrame:
    return cases[cases["source"].eq(g["source"]) & (cases.size_tag.astype(str) == str(g["size_tag"]))
                 & (cases.plans == g["plans"])]


def _gallery_panels(run: pd.DataFrame) -> list[dict]:
    """Best, median and worst case of a run by Dice."""
    ordered = run.sort_values(["dice", "rms_dta_mm"], ascending=[False, True]).reset_index(drop=True)
    picks = {"best": 0, "median": len(ordered) // 2, "worst": len(ordered) - 1}
    panels, seen = [], set()
    for label, i in picks.items():
        r = ordered.iloc[i]
        if i in seen:
            continue
        seen.add(i)
        rms = "–" if pd.isna(r.rms_dta_mm) else f"{r.rms_dta_mm:.2f} mm"
        panels.append({"title": f"{label}: {r.case_id} (fold {r.fold})\nDice {r.dice:.3f}, RMS {rms}",
                       "image": r.image, "reference": r.reference, "prediction": r.prediction})
    return panels


def _evaluation_sections(folder: Path, cases: pd.DataFrame, summary: dict, fig_dir: Path,
                         figs: dict) -> list[str]:
    parts: list[str] = []
    groups = summary.get("groups", [])
    models = model_groups(groups)
    observers = summary.get("observers")
    parts.append(f'<p class="headline"><b>What this evaluation found.</b> '
                 f"{html.escape(headline(summary))}</p>")
    parts.append(f"<p>Dataset <b>{html.escape(str(summary.get('dataset', '?')))}</b>, configuration "
                 f"{html.escape(str(summary.get('configuration', '?')))}: {summary.get('n_runs', 0)} "
                 f"run(s), {summary.get('n_rows', len(cases))} evaluated case × run rows, "
                 f"{len({g['source'] for g in models})} source task(s), "
                 f"{len({g['size_tag'] for g in models})} training-set size(s); beside them the "
                 f"no-learning threshold baseline on every validation case "
                 f"({html.escape(', '.join(summary.get('references') or []) or 'none')}).</p>")

    plans_seen = sorted({g["plans"] for g in models})
    if len(plans_seen) > 1:
        parts.append(_note(f"This report mixes plans ({', '.join(plans_seen)}): the curves and "
                           f"rows come from different networks, so differences between them are "
                           f"not due to the source task alone. Each is labelled with its plans."))

    parts.append("<h2>Dice and RMS DTA against training-set size</h2>")
    band = observers.get("band") if observers else None
    band_counts = (observers.get("n_observers", len(observers.get("names", []))),
                   observers.get("n_cases", len(observers.get("cases", [])))) if band else None
    figs["headline"] = figures.headline(groups, report_figure(fig_dir, "headline"), band=band,
                                        band_counts=band_counts)
    parts.append(_img(figs["headline"], "Dice and RMS DTA against training-set size"))
    counts = sorted({int(g["n_cases"]) for g in models})
    parts.append('<p class="muted">Mean ± SD across all validation cases of all folds ('
                 + (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}")
                 + " cases per point). Dashed black line: the threshold baseline (muscle HU "
                 "inside the body, no learning) on every validation case. " + html.escape(summary.get("failure_rule", ""))
                 + (". Numbers beside points: failed cases. " if summary.get("failure_rule") else
                    " ")
                 + (f"Grey band: range of the {band_counts[0]} observers' mean agreement with the "
                    f"reference on the {band_counts[1]} observer case(s) — other cases than the "
                    f"curves' ({counts[0] if len(counts) == 1 else f'{counts[0]}–{counts[-1]}'} "
                    f"per point)." if band else
                    "No observer results in this folder (run evaluate with --observers for "
                    "the observers' band).") + "</p>")
    legend = _legend_notes(models, summary)
    if legend:
        parts.append("<ul class='muted'>" + "".join(f"<li>{html.escape(t)}</li>" for t in legend)
                     + "</ul>")
    if len({g['size_tag'] for g in models}) < 2:
        parts.append(_note("Only one training-set size was evaluated, so the curve is a point."))

    parts.append("<h2>Summary per source task and training-set size</h2>")
    partial = [g for g in groups if g.get("complete_cases") is False]
    if partial:
        parts.append(_note("Rows rest on different cases: " + ", ".join(
            f"{source_label(g['source'])} n={g['size_tag']} has {g['n_cases']} of "
            f"{g.get('n_expected_cases', '?')} validation cases ({_missing_text(g)} missing)"
            for g in partial) + "; the others have all. Differences between these rows are "
            "partly differences between cases."))
    parts.append(_table(summary_table(groups)))
    parts.append("<h3>Muscle measures and provenance</h3>")
    parts.append(_table(measures_table(groups)))
    if summary.get("human_level"):
        parts.append("<h2>Human level (disagreement with the observers)</h2>")
        hl = pd.DataFrame([{
            "source": source_label(v["source"]), "n": v["n"], "size": v["size_tag"],
            "plans": v["plans"], "cases": v["n_cases"],
            "observers": v.get("n_observers", len(observers.get("names", []))),
            **{f"{_WI_LABELS.get(k, k)} ratio [95% CI]": f"{w[0]:.2f} [{w[1]:.2f}, {w[2]:.2f}]"
               for k, w in (v.get("ratio") or {}).items()},
            "Holm p": f"{v['p_holm']:.3g}" if v.get("p_holm") is not None else "–",
            "CI reaches 1": "yes" if v.get("within_observer_variability") else "no",
            "human level": "yes" if v["human_level"] else "no"}
            for v in summary["human_level"]])
        parts.append(_table(hl))
        if summary.get("verdict_rule"):
            parts.append(f'<p class="muted">Verdict rule: {html.escape(summary["verdict_rule"])}. '
                         "Ratio: the model's disagreement with the observers over the observers' "
                         "disagreement with each other (1 = as the observers). The interval "
                         "resamples cases and observers (two levels), so fewer cases or observers "
                         "widen it and make the verdict harder; the groups are tested together, so "
                         "each p is Holm-adjusted over them. \"CI reaches 1\": the published "
                         "reading (the interval includes 1 or lies below it), which wider "
                         "intervals make easier, so it is not the verdict.</p>")
        wrows = pd.read_csv(folder / EVAL_OBSERVERS_WILLIAMS_CSV) if (
            folder / EVAL_OBSERVERS_WILLIAMS_CSV).is_file() else pd.DataFrame()
        obs_rows = pd.DataFrame(observers.get("williams", []))
        forest = []
        if len(wrows):
            wrows["rater"] = wrows.source.map(source_label) + " n=" + wrows.size_tag.astype(str)
            forest.append(wrows.assign(block=f"models (Holm over {wrows.n_tests.max()})"))
        if len(obs_rows):
            forest.append(obs_rows.assign(rater="observer " + obs_rows.rater.astype(str),
                                          block="observers, each against the others"))
        if forest:
            figs["williams"] = figures.williams(pd.concat(forest, ignore_index=True),
                                                report_figure(fig_dir, "williams"), group_column="block")
            parts.append(_img(figs["williams"], "Human-level test: disagreement ratios"))

    parts.append("<h2>Muscle measures of the best run (Bland–Altman)</h2>")
    best = best_group(groups)
    if best is not None:
        run = _group_rows(cases, best)
        title = (f"{best['source']} n={best['size_tag']} ({best['plans']}): "
                 f"mean Dice {best['metrics']['dice']['mean']:.3f}, {len(run)} cases")
        figs["bland_altman"] = figures.bland_altman(run, title,
                                                    report_figure(fig_dir, "bland_altman"))
        parts.append(_img(figs["bland_altman"], "Bland-Altman SMA and SMD"))
    else:
        parts.append(_note("No run with evaluated cases."))

    parts.append("<h2>Per-case distributions</h2>")
    figs["boxes"] = figures.boxes(cases, report_figure(fig_dir, "boxes"))
    parts.append(_img(figs["boxes"], "Box plots per source and size"))

    parts.append("<h2>Gallery: best, median and worst case of the best run</h2>")
    if best is not None:
        run = _group_rows(cases, best)
        panels = _gallery_panels(run)
        missing = [p for p in panels for k in ("image", "reference", "prediction")
                   if not Path(p[k]).is_file()]
        if missing:
            parts.append(_note(f"Gallery skipped: {len(missing)} image/mask file(s) listed in "
                               f"cases.csv no longer exist (e.g. {missing[0]['image']})."))
        else:
            figs["gallery"] = figures.gallery(panels, report_figure(fig_dir, "gallery"))
            parts.append(_img(figs["gallery"], "Gallery of cases"))
            parts.append('<p class="muted">CT window −160..240 HU; green: reference, '
                         'magenta: prediction.</p>')

    parts.append("<h2>Missing runs and predictions</h2>")
    missing_runs = summary.get("missing", [])
    if missing_runs:
        parts.append(_table(pd.DataFrame([{
            "trainer": m["trainer"], "plans": m["plans"],
            "missing folds": ",".join(map(str, m["missing_folds"])) or "–",
            "missing predictions": "; ".join(f"fold {f}: {', '.join(c)}"
                                             for f, c in m["missing_predictions"].items()) or "–"}
            for m in missing_runs])))
    else:
        parts.append("<p>None: every run has every fold of splits_final.json and a prediction "
                     "for every validation case.</p>")

    overlap = summary.get("pretraining_overlap", {})
    rows = [{"plans": p, "trainer": t, "source": source_label(v.get("source", "?")),
             "data": "; ".join(v.get("data") or []) or "–",
             "scope": ", ".join(v.get("scope") or []) or "–",
             "cases of this dataset seen": v.get("n_cases", 0),
             "folds without a record": ",".join(map(str, v.get("unknown_folds") or [])) or "–"}
            for p, per in overlap.items() for t, v in per.items()]
    parts.append("<h2>Pretraining data overlap</h2>")
    seen = [g for g in groups if g.get("n_in_pretraining")]
    if seen:
        parts.append(_note(
            f"{figures.MARK_PRETRAINING} Pretraining saw validation cases of "
            + ", ".join(f"{source_label(g['source'])} n={g['size_tag']} ({g['plans']}): "
                        f"{g['n_in_pretraining']} of {g['n_cases']}" for g in seen)
            + ". Their results are optimistic; pretrain per fold (the default) to avoid it."))
    parts.append(_table(pd.DataFrame(rows)) + "<p class='muted'>From each run's own record of "
                 "the store entry it loaded (fold_k/debug.json, xfer_info.transfer), never from "
                 "the store as it is now. Cases used in pretraining are flagged in cases.csv "
                 "(column in_pretraining; pretraining_record says where that comes from).</p>"
                 if rows else "<p>No run of a pretrained source.</p>")
    return parts


def _what_runs_saw(groups: list[dict], summary: dict) -> str | None:
    """The legend line saying how many images of this dataset each source's runs saw: N labelled
    ones for every run, and for sources whose pretraining read this dataset's images also those
    (without labels), with the dataset's real numbers."""
    extra: dict[str, set[int]] = {}
    for g in groups:
        counts = [c for c in g.get("pretraining_images_per_fold") or [] if c]
        if counts:
            extra.setdefault(g["source"], set()).update(counts)
    if not extra:
        return None
    fold_sizes = sorted(set(summary.get("fold_training_sizes") or []))
    every = set().union(*extra.values()) <= set(fold_sizes) if fold_sizes else False
    counts = sorted(set().union(*extra.values()))
    per_fold = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    names = ", ".join(source_label(s) for s in extra)
    others = [source_label(s) for s in dict.fromkeys(g["source"] for g in groups)
              if s not in extra]
    text = (f"What each point saw of this dataset: every run trained on its n labelled slices; "
            f"the pretraining of {names} also saw {per_fold} images of this dataset per fold "
            f"without labels" + (" (every training image of its fold)" if every else "")
            + f", so their n=N point rests on N labelled + {per_fold} unlabelled images")
    return text + (f", while {', '.join(others)} saw N." if others else ".")


def _legend_notes(groups: list[dict], summary: dict | None = None) -> list[str]:
    """What the legend marks of the headline figure mean, for the groups that carry them, what
    each run saw of this dataset, and which points rest on other cases than the rest."""
    notes = []
    seen = [g for g in groups if g.get("n_in_pretraining")]
    if seen:
        notes.append(f"{figures.MARK_PRETRAINING} pretraining saw validation cases: "
                     + ", ".join(f"{source_label(g['source'])} n={g['size_tag']} "
                                 f"({g['n_in_pretraining']} of {g['n_cases']})" for g in seen))
    unknown = [g for g in groups if g.get("n_pretraining_unknown")]
    if unknown:
        notes.append("pretraining unknown (the run's debug.json records no store entry, e.g. a "
                     "run of an older nnunet-xfer): "
                     + ", ".join(f"{source_label(g['source'])} n={g['size_tag']} "
                                 f"({g['n_pretraining_unknown']} of {g['n_cases']} cases)"
                                 for g in unknown))
    explicit = [g for g in groups if g.get("explicit_schedule")]
    if explicit:
        notes.append(f"{figures.MARK_SCHEDULE} explicit fine-tuning options (not the default "
                     "schedule every source shares): "
                     + "; ".join(f"{source_label(g['source'])} n={g['size_tag']}: "
                                 f"{g['explicit_schedule']}" for g in explicit))
    saw = _what_runs_saw(groups, summary or {})
    if saw:
        notes.append(saw)
    partial = [g for g in groups if g.get("complete_cases") is False]
    if partial:
        notes.append("points on other cases than the rest (missing folds or predictions), so "
                     "compare them with care: "
                     + ", ".join(f"{source_label(g['source'])} n={g['size_tag']} "
                                 f"({g['n_cases']} of {g.get('n_expected_cases', '?')} validation "
                                 f"cases; missing {_missing_text(g)})" for g in partial))
    return notes


#: The blocks of the observer study's forest plot and table, in order.
_OBSERVER_BLOCKS = ("model", "reference annotation", "observers, each against the others")


def _observer_block(rater: str, summary: dict) -> str:
    if rater == summary.get("model"):
        return _OBSERVER_BLOCKS[0]
    if rater in summary.get("observers", []):
        return _OBSERVER_BLOCKS[2]
    return _OBSERVER_BLOCKS[1]


def verdict_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per rater of a human-level test (``williams.csv`` rows, one per metric): its ratio
    of disagreements with 95% CI per metric, Holm-adjusted p and verdict, with the block it
    belongs to when ``rows`` has one. The rule is stated once, under the table, not per row."""
    out = []
    for rater, g in rows.groupby("rater", sort=False):
        first = g.iloc[0]
        row = {"rater": rater} if "block" not in g else {"rater": rater, "kind": first["block"]}
        for r in g.itertuples(index=False):
            row[f"{_WI_LABELS.get(r.metric, r.metric)} ratio [95% CI]"] = (
                f"{r.ratio:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]")
        row.update({"cases": int(first["n_cases"]), "observers": int(first["n_observers"]),
                    "Holm p": f"{first['p_holm']:.3g}",
                    "human level": "yes" if bool(first["human_level"]) else "no"})
        out.append(row)
    return pd.DataFrame(out)


def _observer_sections(folder: Path, fig_dir: Path, figs: dict) -> list[str]:
    parts = ["<h2>Observer study</h2>"]
    summary = json.loads((folder / EVAL_SUMMARY_JSON).read_text()) if (
        folder / EVAL_SUMMARY_JSON).is_file() else {}
    if summary:
        parts.append(f"<p>{len(summary.get('cases', []))} case(s), observers: "
                     f"{html.escape(', '.join(summary.get('observers', [])))}"
                     + (f"; model: {html.escape(summary['model'])}" if summary.get("model") else "")
                     + ".</p>")
    w = pd.read_csv(folder / OBS_WILLIAMS_CSV)
    if len(w):
        w["block"] = w.rater.astype(str).map(lambda r: _observer_block(r, summary))
        order = {b: i for i, b in enumerate(_OBSERVER_BLOCKS)}
        w = w.sort_values("block", key=lambda c: c.map(order), kind="stable")
        figs["williams"] = figures.williams(w, report_figure(fig_dir, "williams"), group_column="block")
        parts.append(_img(figs["williams"], "Human-level test: disagreement ratios"))
        parts.append(_table(verdict_table(w)))
        if summary.get("verdict_rule"):
            parts.append(f'<p class="muted">Verdict rule (every row): '
                         f'{html.escape(summary["verdict_rule"])}. Ratio: the rater\'s '
                         "disagreement with the observers over the observers' disagreement with "
                         "each other (1 = as the observers). Every row's p-values, intervals and "
                         "the published reading (interval reaching 1, "
                         "within_observer_variability) are in williams.csv.</p>")
    else:
        parts.append(_note("williams.csv is empty."))
    if summary.get("vs_reference"):
        parts.append("<h3>Mean agreement with the reference</h3>")
        parts.append(_table(pd.DataFrame(summary["vs_reference"]).T.reset_index(names="rater")))
    if summary.get("vs_staple"):
        parts.append("<h3>Mean agreement with the STAPLE consensus of the observers</h3>")
        parts.append(_table(pd.DataFrame(summary["vs_staple"]).T.reset_index(names="rater")))
    if (folder / OBS_MEASURES_AGREEMENT_CSV).is_file():
        parts.append("<h3>Muscle measures against the reference</h3>")
        parts.append(_table(pd.read_csv(folder / OBS_MEASURES_AGREEMENT_CSV)))
    else:
        parts.append(_note("No muscle measures (run observers with --images for SMA/SMD)."))
    return parts


def _written_by_us(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


def _check_html(output_html: Path) -> None:
    if output_html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{output_html}: give the report a name ending in .html")
    if output_html.is_dir():
        raise UserError(f"{output_html} is a folder; give the report's .html file name")


def _claim_in_owned_folder(output_html: Path, fig_dir: Path) -> None:
    """When the report lies in another command's output folder (e.g. the evaluation folder the
    experiment writes it into), list its files in that folder's marker, so that command's
    ``--overwrite`` may replace them with the rest of its output."""
    ours = [output_html.name] + sorted(
        f"{fig_dir.name}/{p.relative_to(fig_dir).as_posix()}" for p in fig_dir.rglob("*")
        if p.is_file() or p.is_symlink())
    add_to_marker(output_html.parent, ours)


#: The columns of an evaluation's cases.csv the report reads.
CASE_COLUMNS = ("case_id", "fold", "source", "size_tag", "plans", "n", "dice", "rms_dta_mm",
                "failed", "image", "reference", "prediction", "sma_cm2_pred", "sma_cm2_ref",
                "smd_hu_pred", "smd_hu_ref")
#: The keys of every group of an evaluation's summary.json the report reads.
GROUP_KEYS = ("source", "size_tag", "plans", "n", "folds", "n_cases", "n_failed", "metrics")


def _check_evaluation(folder: Path, cases: pd.DataFrame, summary: dict) -> None:
    """One line for an evaluation whose files were edited by hand or cut short: missing columns
    in cases.csv, malformed groups in summary.json, or groups cases.csv does not hold."""
    redo = "re-run `nnunet-xfer evaluate` to write it again"
    missing = [c for c in CASE_COLUMNS if c not in cases.columns]
    if missing:
        raise UserError(f"{folder / EVAL_CASES_CSV} lacks column(s) {', '.join(missing)}; {redo}")
    groups = summary["groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise UserError(f"{folder / EVAL_SUMMARY_JSON}: 'groups' is not a list of groups; {redo}")
    held = set(zip(cases["source"].astype(str), cases["size_tag"].astype(str),
                   cases["plans"].astype(str)))
    for g in groups:
        lacking = [k for k in GROUP_KEYS if k not in g]
        if lacking or not isinstance(g["metrics"], dict):
            raise UserError(f"{folder / EVAL_SUMMARY_JSON}: a group lacks "
                            f"{', '.join(lacking) or 'its metrics'}; {redo}")
        key = (str(g["source"]), str(g["size_tag"]), str(g["plans"]))
        if key not in held:
            raise UserError(f"{folder / EVAL_SUMMARY_JSON} names source {key[0]!r} n={key[1]} "
                            f"({key[2]}), which {EVAL_CASES_CSV} does not hold (edited apart?); "
                            f"{redo}")


def _input_files(folder: Path, cases: pd.DataFrame | None) -> list[Path]:
    """What a report reads of an evaluation or observer-study folder: its tables, and the image
    and mask files of the gallery."""
    files = [p for p in Path(folder).iterdir() if p.name in _INPUTS]
    if cases is None:
        return files
    columns = [c for c in ("image", "reference", "prediction") if c in cases.columns]
    return files + [Path(p) for p in pd.unique(cases[columns].to_numpy().ravel())
                    if isinstance(p, str)]


def _read_evaluation(folder: Path) -> tuple[pd.DataFrame, dict]:
    """cases.csv and summary.json of an ``evaluate`` folder; one line when unreadable or empty."""
    try:
        cases = pd.read_csv(folder / EVAL_CASES_CSV, dtype={"case_id": str, "size_tag": str})
        summary = json.loads((folder / EVAL_SUMMARY_JSON).read_text())
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as e:
        raise UserError(f"{folder}: cannot read the evaluation ({str(e).splitlines()[0]}); "
                        f"re-run `nnunet-xfer evaluate`") from None
    if not isinstance(summary, dict):
        raise UserError(f"{folder / EVAL_SUMMARY_JSON} is not an evaluation summary (a JSON "
                        f"object expected); re-run `nnunet-xfer evaluate`")
    if not len(cases) or not summary.get("groups"):
        raise UserError(f"{folder} is an empty evaluation (no evaluated case); nothing to "
                        f"report: train and validate a run, then re-run `nnunet-xfer evaluate`")
    _check_evaluation(folder, cases, summary)
    return cases, summary


def write_report(input_dir: Path, output_html: Path, overwrite: bool = False) -> Path:
    """Write the HTML report of an evaluation (or observer-study) folder and its PNG figures.

    The PNGs go into ``<name>_files/`` beside the HTML
    (:func:`nnunet_xfer.layout.report_figures_folder`). An existing HTML or figures folder is
    replaced only with ``overwrite`` and only when a report wrote it.
    UserError for a folder that is neither an evaluation nor an observer study, or an evaluation
    without any evaluated case.
    """
    folder, output_html = Path(input_dir), Path(os.path.abspath(output_html))
    if not folder.is_dir():
        raise UserError(f"evaluation folder {folder} "
                        f"{'is a file, not a folder' if folder.exists() else 'does not exist'}; "
                        f"give the folder `nnunet-xfer evaluate` or `observers` wrote")
    is_eval = (folder / EVAL_CASES_CSV).is_file() and (folder / EVAL_SUMMARY_JSON).is_file()
    is_obs = (folder / OBS_WILLIAMS_CSV).is_file()
    if not (is_eval or is_obs):
        raise UserError(f"{folder} has neither cases.csv + summary.json (from `nnunet-xfer "
                        f"evaluate`) nor williams.csv (from `nnunet-xfer observers`)")
    cases, summary = _read_evaluation(folder) if is_eval else (None, None)

    def sections(tmp: Path, figs: dict) -> list[str]:
        parts = [f"<h1>nnunet_xfer evaluation report</h1><p class='muted'>"
                 f"{html.escape(str(folder.resolve()))}</p>"]
        if is_eval:
            parts += _evaluation_sections(folder, cases, summary, tmp, figs)
        if is_obs:
            parts += _observer_sections(folder, tmp, figs)
        return parts

    return _publish(output_html, overwrite, _input_files(folder, cases), "nnunet_xfer report",
                    sections, str(folder))


def _publish(output_html: Path, overwrite: bool, inputs: list[Path], title: str,
             sections, where: str) -> Path:
    """Write the page ``sections(figures_folder, figs)`` builds, and its figures folder, by the
    report's output rules (see :func:`write_report`): both claimed by the output guard before
    any figure is drawn, never one of the files read (``inputs``) of the folders ``where``."""
    _check_html(output_html)
    html_claim = check_replaceable(output_html, COMMAND, overwrite, inputs=inputs, folder=False,
                                   written=_written_by_us)
    fig_claim = check_replaceable(report_figures_folder(output_html), COMMAND, overwrite, inputs=inputs)
    figs: dict[str, Path] = {}
    with owned_output(fig_claim) as tmp:
        try:
            parts = sections(tmp, figs)
        except (KeyError, AttributeError, IndexError, TypeError, ValueError,
                pd.errors.ParserError) as e:  # files edited by hand beyond what the checks see
            raise UserError(f"{where}: its files do not fit together ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:120]}); re-run `nnunet-xfer evaluate` "
                            f"(or `nnunet-xfer observers`) to write them again") from None
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f'<meta name="generator" content="{GENERATOR}"><title>{html.escape(title)}'
                f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write_text(html_claim, page)
    _claim_in_owned_folder(output_html, fig_claim.path)
    return output_html


# ---------------------------------------------------------------- several evaluations overlaid
def _comparison_sections(evaluations: list[tuple[str, Path, pd.DataFrame, dict]], fig_dir: Path,
                         figs: dict) -> list[str]:
    """The curves of several evaluations in one figure (a line style per evaluation), their
    summary tables, and whether they validated on the same cases."""
    parts = ["<h2>Evaluations compared</h2>", _table(pd.DataFrame([{
        "label": label, "folder": str(folder.resolve()), "dataset": summary.get("dataset", "?"),
        "runs": summary.get("n_runs", len(summary["groups"])),
        "validation cases": cases[["fold", "case_id"]].drop_duplicates().shape[0]}
        for label, folder, cases, summary in evaluations]))]
    validated = {label: set(zip(cases["fold"].astype(str), cases["case_id"]))
                 for label, _f, cases, _s in evaluations}
    if len({frozenset(v) for v in validated.values()}) > 1:
        parts.append(_note("The evaluations validate on different cases (folds or datasets "
                           "differ): their curves are not measured on the same slices, so a "
                           "difference between them is not due to the training data alone."))
    bands = {json.dumps((s.get("observers") or {}).get("band"), sort_keys=True)
             for _l, _f, _c, s in evaluations}
    observers = evaluations[0][3].get("observers") or {}
    band = observers.get("band") if len(bands) == 1 else None
    band_counts = (observers.get("n_observers", len(observers.get("names", []))),
                   observers.get("n_cases", len(observers.get("cases", [])))) if band else None
    groups = [{**g, "series": label} for label, _f, _c, summary in evaluations
              for g in summary["groups"]]
    parts.append("<h2>Dice and RMS DTA against training-set size</h2>")
    figs["headline"] = figures.headline(groups, report_figure(fig_dir, "headline"), band=band,
                                        band_counts=band_counts)
    parts.append(_img(figs["headline"], "Dice and RMS DTA against training-set size, overlaid"))
    parts.append('<p class="muted">Colour: source task; line style: evaluation (legend: '
                 '"source — label"). Mean ± SD across all validation cases of all folds.'
                 + ("" if band or len(bands) == 1 else " No observers' band: the evaluations "
                    "carry different observer results.") + "</p>")
    parts.append("<h2>Summary per evaluation, source task and training-set size</h2>")
    tables = [summary_table(summary["groups"]).assign(evaluation=label)
              for label, _f, _c, summary in evaluations]
    table = pd.concat(tables, ignore_index=True)
    parts.append(_table(table[["evaluation"] + [c for c in table.columns if c != "evaluation"]]))
    return parts


def comparison_labels(inputs: list[tuple[str | None, Path]]) -> list[str]:
    """Each evaluation's label: the one given, else its dataset's name (else its folder's),
    numbered when two would read the same."""
    labels = []
    for label, folder in inputs:
        if not label:
            try:
                label = str(json.loads((Path(folder) / EVAL_SUMMARY_JSON).read_text())["dataset"])
            except (OSError, ValueError, KeyError, TypeError):
                label = Path(folder).name
        labels.append(label)
    return [f"{x} ({labels[:i].count(x) + 1})" if labels.count(x) > 1 else x
            for i, x in enumerate(labels)]


def write_comparison(inputs: list[tuple[str | None, Path]], output_html: Path,
                     overwrite: bool = False) -> Path:
    """One HTML report overlaying the curves of several ``evaluate`` folders (``report -i A -i B``).

    ``inputs``: (label or None, folder) pairs; a missing label becomes the folder's dataset name.
    Each folder must be a non-empty evaluation. The figure draws a line style per evaluation and
    a colour per source; the summary tables follow, labelled; a note says when the evaluations
    did not validate on the same cases. Output rules as :func:`write_report`.
    """
    if len(inputs) < 2:
        raise UserError("a comparison needs two or more evaluation folders (-i A -i B)")
    output_html = Path(os.path.abspath(output_html))
    evaluations = []
    for label, (_given, folder) in zip(comparison_labels(inputs), inputs):
        folder = Path(folder)
        if not ((folder / EVAL_CASES_CSV).is_file() and (folder / EVAL_SUMMARY_JSON).is_file()):
            raise UserError(f"{folder} is not an evaluation folder (cases.csv + summary.json from "
                            f"`nnunet-xfer evaluate`); only evaluations can be overlaid")
        evaluations.append((label, folder, *_read_evaluation(folder)))

    def sections(tmp: Path, figs: dict) -> list[str]:
        return (["<h1>nnunet_xfer comparison report</h1><p class='muted'>"
                 + html.escape(", ".join(f"{label}: {folder.resolve()}"
                                         for label, folder, _c, _s in evaluations)) + "</p>"]
                + _comparison_sections(evaluations, tmp, figs))

    return _publish(output_html, overwrite,
                    [p for _l, f, c, _s in evaluations for p in _input_files(f, c)],
                    "nnunet_xfer comparison", sections,
                    ", ".join(str(f) for _l, f, _c, _s in evaluations))
