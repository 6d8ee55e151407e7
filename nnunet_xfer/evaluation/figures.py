"""Matplotlib figures of the evaluation report (Agg backend, PNG files).

Each function draws one figure from tables that ``evaluate`` / ``observers`` wrote and saves it
to ``path``; the report embeds the PNGs.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nnunet_xfer.evaluation import agreement  # noqa: E402
from nnunet_xfer.imaging import load_mask, load_slice  # noqa: E402
from nnunet_xfer.evaluation.raters import with_worst  # noqa: E402
from nnunet_xfer.sources import (color as source_color, is_reference,  # noqa: E402
                                 label as source_label, rank)

#: CT display window of the gallery (HU), the usual soft-tissue window for L3 muscle.
WINDOW_HU = (-160.0, 240.0)
#: Legend marks: pretraining saw validation cases; an explicit fine-tuning schedule was used.
MARK_PRETRAINING = "†"
MARK_SCHEDULE = "‡"
METRIC_LABELS = {"dice": "Dice", "rms_dta_mm": "RMS DTA (mm)"}
#: Line style and marker of each plans identifier when a figure mixes plans.
_PLANS_STYLES = ("-", "--", ":", "-.")
_PLANS_MARKERS = ("o", "s", "^", "D")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def curve_label(source: str, plans: str, multi_plans: bool, marks: str = "") -> str:
    """Legend label of one source's curve: the source, its plans when a figure mixes plans, and
    the marks of :data:`MARK_PRETRAINING` / :data:`MARK_SCHEDULE`."""
    text = source_label(source) + (f" ({plans})" if multi_plans else "")
    return text + (f" {marks}" if marks else "")


def headline(groups: list[dict], path: Path, band: dict | None = None,
             center: str = "mean", band_counts: tuple[int, int] | None = None) -> Path:
    """Dice and RMS DTA against training-set size per source (log x), the observers as a band,
    each no-learning reference group (``reference`` true: the threshold baseline) as a dashed
    horizontal line at its mean.

    ``center`` is ``mean`` (error bars ± SD) or ``median`` (error bars = IQR) across cases.
    Failed cases are in every point (at their worst value); their number is written beside the
    point. ``band_counts`` = (observers, cases) of the band. A figure that mixes plans says so.
    Groups carrying a ``series`` label (one evaluation folder of several, ``report -i A -i B``)
    get a line style per series, named in the legend.
    """
    references = [g for g in groups if g.get("reference")]
    groups = [g for g in groups if not g.get("reference")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    all_n = sorted({float(g["n"]) for g in groups})
    plans_seen = sorted({g["plans"] for g in groups})
    multi_plans = len(plans_seen) > 1
    # one line style per (series, plans): the plans alone when there are no series
    styles = sorted({(g.get("series") or "", g["plans"]) for g in groups})
    for ax, metric in zip(axes, ("dice", "rms_dta_mm")):
        if band and metric in band and band[metric][0] is not None:
            lo, hi = band[metric]
            what = (f" ({band_counts[0]} observers, {band_counts[1]} cases)"
                    if band_counts else "")
            ax.axhspan(lo, hi if hi > lo else lo + 1e-3, color="0.8", alpha=0.6, lw=0,
                       label="observers vs reference" + what)
        for ref in references:  # a no-learning reference: a line at its mean over its cases
            mean = (ref["metrics"].get(metric) or {}).get("mean")
            if mean is not None and np.isfinite(mean):
                series = f" — {ref['series']}" if ref.get("series") else ""
                ax.axhline(mean, color="k", ls="--", lw=1.2, zorder=1,
                           label=f"{source_label(ref['source'])}, mean of {ref['n_cases']} "
                                 f"cases{series}")
        by_key: dict[tuple, list[dict]] = {}
        for g in groups:
            by_key.setdefault((g["source"], g["plans"], g.get("series") or ""), []).append(g)
        for (source, plans, series), gs in by_key.items():
            gs = sorted((g for g in gs if g["metrics"][metric].get("n", 0)),
                        key=lambda g: float(g["n"]))
            if not gs:
                continue
            x = np.array([float(g["n"]) for g in gs])
            s = [g["metrics"][metric] for g in gs]
            if center == "median":
                y = np.array([v["median"] for v in s])
                err = np.array([[v["median"] - v["q1"] for v in s], [v["q3"] - v["median"] for v in s]])
            else:
                y = np.array([v["mean"] for v in s])
                sd = np.nan_to_num(np.array([v.get("sd", np.nan) for v in s], float))
                # Dice cannot exceed 1 nor a distance fall below 0: clip the bars at the limits
                upper = np.minimum(sd, 1.0 - y) if metric == "dice" else sd
                lower = sd if metric == "dice" else np.minimum(sd, y)
                err = np.vstack([lower, upper])
            marks = (MARK_PRETRAINING if any(g.get("n_in_pretraining") for g in gs) else "") + \
                (MARK_SCHEDULE if any(g.get("explicit_schedule") for g in gs) else "")
            style = styles.index((series, plans)) % len(_PLANS_STYLES)
            ax.errorbar(x, y, yerr=err, marker=_PLANS_MARKERS[style], ms=5, capsize=3, lw=1.6,
                        ls=_PLANS_STYLES[style], color=source_color(source),
                        label=curve_label(source, plans, multi_plans)
                        + (f" — {series}" if series else "") + (f" {marks}" if marks else ""))
            for xi, yi, v in zip(x, y, s):
                if v.get("n_failed"):
                    ax.annotate(f"{v['n_failed']} failed", (xi, yi), xytext=(4, -10),
                                textcoords="offset points", fontsize=7,
                                color=source_color(source))
        ax.set_xscale("log")
        if all_n:
            ax.set_xticks(all_n)
            ax.set_xticklabels([f"{n:g}" for n in all_n])
            ax.minorticks_off()
            ax.set_xlim(min(all_n) / 1.3, max(all_n) * 1.3)
        ax.set_xlabel("training-set size (slices)")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    stat = "median, IQR" if center == "median" else "mean ± SD"
    counts = sorted({int(g["n_cases"]) for g in groups if "n_cases" in g})
    cases = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}") if counts else "?"
    axes[0].set_title(f"Dice ({stat}; {cases} cases per point)", fontsize=10)
    axes[1].set_title(f"RMS distance-to-agreement ({stat}; failed cases at the image diagonal)",
                      fontsize=10)
    if multi_plans:
        fig.suptitle(f"Mixed plans ({', '.join(plans_seen)}): curves come from different networks",
                     color="tab:red")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4),
                   bbox_to_anchor=(0.5, -0.12), frameon=False)
    return _save(fig, path)


def bland_altman(run: pd.DataFrame, title: str, path: Path) -> Path:
    """Bland–Altman plots (prediction − reference) of SMA and SMD for one run's cases."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (m, label) in zip(axes, (("sma_cm2", "SMA (cm²)"), ("smd_hu", "SMD (HU)"))):
        pred, ref = run[f"{m}_pred"].to_numpy(float), run[f"{m}_ref"].to_numpy(float)
        ok = np.isfinite(pred) & np.isfinite(ref)
        ax.set_title(label)
        ax.set_xlabel(f"mean of prediction and reference, {label}")
        ax.set_ylabel(f"prediction − reference, {label}")
        ax.grid(alpha=0.3)
        if ok.sum() < 2:
            ax.text(0.5, 0.5, "fewer than 2 cases with both values", ha="center",
                    transform=ax.transAxes)
            continue
        ba = agreement.bland_altman(pred[ok], ref[ok])
        mean, diff = (pred[ok] + ref[ok]) / 2, pred[ok] - ref[ok]
        ax.scatter(mean, diff, s=18, alpha=0.75, color="tab:blue")
        for value, style, text in ((ba["bias"], "-", "bias"), (ba["loa_low"], "--", "−1.96 SD"),
                                   (ba["loa_high"], "--", "+1.96 SD")):
            ax.axhline(value, color="tab:red", ls=style, lw=1)
            ax.annotate(f"{text} {value:.2f}", (1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8,
                        color="tab:red")
    fig.suptitle(title)
    return _save(fig, path)


def boxes(cases: pd.DataFrame, path: Path) -> Path:
    """Box plots of Dice and RMS DTA per source × training-set size (all folds' cases)."""
    keys = (cases.groupby(["source", "size_tag", "plans"], sort=False)
            .agg(n=("n", "median")).reset_index())
    keys = keys.sort_values(by=["source", "n"], key=lambda c: c.map(rank) if c.name == "source" else c)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(keys) + 2), 7), sharex=True)
    for ax, metric in zip(axes, ("dice", "rms_dta_mm")):
        data, colors, labels = [], [], []
        for k in keys.itertuples(index=False):
            rows = cases[cases["source"].eq(k.source) & (cases.size_tag == k.size_tag)
                         & (cases.plans == k.plans)]
            sel = with_worst(rows[metric], rows.failed, rows.worst_distance_mm, metric) \
                if "worst_distance_mm" in rows else rows[metric].to_numpy(float)
            sel = sel[np.isfinite(sel)]
            data.append(sel if len(sel) else np.array([np.nan]))
            colors.append(source_color(k.source))
            labels.append(f"{k.source}\n(no learning)" if is_reference(k.source) else
                          f"{k.source}\nn={k.size_tag if k.size_tag != 'all' else f'{k.n:g}'}")
        bp = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=True)
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.6)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, fontsize=8)
    axes[0].set_title("per-case Dice and RMS DTA by source task and training-set size "
                      "(failed cases at the image diagonal)")
    return _save(fig, path)


def gallery(panels: list[dict], path: Path) -> Path:
    """CT slices (window −160..240 HU) with reference (green) and predicted (magenta) contours.

    Each panel: ``title``, ``image``, ``reference``, ``prediction`` (file paths).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 4.3), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.09, top=0.88, wspace=0.04)
    for ax, p in zip(axes[0], panels):
        image = load_slice(p["image"]).array
        ref = load_mask(p["reference"]).array
        pred = load_mask(p["prediction"]).array
        ax.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1],
                  interpolation="nearest")
        for mask, color in ((ref, "lime"), (pred, "magenta")):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.2)
        ax.set_title(p["title"], fontsize=9)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color="lime", label="reference"),
               plt.Line2D([], [], color="magenta", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)


def williams(rows: pd.DataFrame, path: Path, label_column: str = "rater",
             group_column: str | None = None) -> Path:
    """Forest plot of the human-level test per rater and metric: the disagreement ratio (rater vs
    observers over observers vs each other) with its 95% CI on a log axis; 1 = observer level, the
    dotted red line the verdict's threshold 1 + margin. Colour = the verdict actually used
    (``human_level``: the Holm-adjusted non-inferiority test), green human level, red not.

    ``group_column`` (e.g. models / observers): the rows of each group form a block of their own,
    in order of first appearance, separated by a line and named at the block's top."""
    metrics_present = [m for m in ("dice", "rms_dta_mm") if m in set(rows.metric)]
    groups = (list(dict.fromkeys(rows[group_column].astype(str))) if group_column else [""])
    # y of each rater: top to bottom, one empty row (the separator) between blocks
    positions: dict[tuple[str, str], float] = {}
    y, tops = 0.0, {}
    for group in groups:
        block = rows[rows[group_column].astype(str) == group] if group_column else rows
        tops[group] = y
        for rater in dict.fromkeys(block[label_column].astype(str)):
            positions[(group, rater)] = y
            y += 1
        y += 1  # the gap before the next block
    height = max(1.0, y - 1)
    fig, axes = plt.subplots(1, len(metrics_present), figsize=(5.5 * len(metrics_present),
                                                              0.35 * height + 1.8),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], metrics_present):
        sub = rows[rows.metric == m].reset_index(drop=True)
        keys = zip(sub[group_column].astype(str) if group_column else [""] * len(sub),
                   sub[label_column].astype(str))
        yy = -np.array([positions[k] for k in keys])
        human = sub.human_level.astype(bool).to_numpy()
        ratio = sub.ratio.to_numpy(float)
        low, high = sub.ci_low.to_numpy(float), sub.ci_high.to_numpy(float)
        ax.errorbar(ratio, yy, xerr=[ratio - low, high - ratio], fmt="none", ecolor="0.4",
                    capsize=3)
        ax.scatter(ratio, yy, c=np.where(human, "tab:green", "tab:red"), zorder=3)
        ax.axvline(1.0, color="k", ls="--", lw=1)
        for bound in sorted(set(1.0 + sub.margin.astype(float))):
            ax.axvline(bound, color="tab:red", ls=":", lw=1.2)
        for group in groups[1:]:
            ax.axhline(-(tops[group] - 1), color="0.5", lw=0.8)
        if group_column:
            for group in groups:
                ax.annotate(group, (0.01, -tops[group] + 0.45), xycoords=("axes fraction", "data"),
                            fontsize=8, fontweight="bold", color="0.3", va="bottom")
        ax.set_xscale("log")  # a ratio: 0.5 and 2 equally far from 1
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_yticks([-v for v in positions.values()])
        ax.set_yticklabels([rater for _, rater in positions])
        ax.set_ylim(-(height + 0.2), 1.0 if group_column else 0.8)
        ax.set_xlabel("ratio of disagreements (95% CI)")
        margins = sorted(set(sub.margin.astype(float)))
        ax.set_title(f"{'1 − Dice' if m == 'dice' else 'RMS DTA'}: green = human level "
                     f"(the verdict), dotted = threshold 1 + {'/'.join(f'{v:g}' for v in margins)}",
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("disagreement with the observers / the observers' disagreement with each other",
                 fontsize=10)
    return _save(fig, path)
