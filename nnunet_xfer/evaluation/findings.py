"""What an evaluation found, in words: the best model per n, whether it beats the no-learning
reference and reaches the observers, on how many cases, under which rules, and how long the
models trained.

Everything here is read from ``evaluate``'s ``summary.json`` (its ``groups``, ``human_level``
verdicts, ``observers`` and rules); the report opens with :func:`headline` and the demo picks the
model of its observer study with :func:`best_group`.
"""
from __future__ import annotations

from nnunet_xfer.evaluation.references import model_groups, reference_groups
from nnunet_xfer.sources import DATA_KINDS, label as source_label

#: nnU-Net's default schedule: 1000 epochs × 250 iterations.
NNUNET_DEFAULT_ITERATIONS = 1000 * 250
#: Below this fraction of nnU-Net's schedule a run is a smoke test of the pipeline.
SMOKE_TEST_FRACTION = 0.01


def _mean(g: dict, metric: str) -> float | None:
    return (g.get("metrics", {}).get(metric) or {}).get("mean")


def best_group(groups: list[dict]) -> dict | None:
    """The model group (never a reference row) with the highest mean Dice; ties: the lower mean
    RMS DTA. None when no model group has a scored case."""
    scored = [g for g in model_groups(groups) if (g["metrics"].get("dice") or {}).get("n")]
    if not scored:
        return None
    rms = lambda g: _mean(g, "rms_dta_mm") if _mean(g, "rms_dta_mm") is not None else float("inf")  # noqa: E731
    return max(scored, key=lambda g: (g["metrics"]["dice"]["mean"], -rms(g)))


def best_per_n(groups: list[dict]) -> list[dict]:
    """:func:`best_group` of every training-set size, in increasing n."""
    by_n: dict[str, list[dict]] = {}
    for g in model_groups(groups):
        by_n.setdefault(str(g["size_tag"]), []).append(g)
    best = [b for gs in by_n.values() if (b := best_group(gs)) is not None]
    return sorted(best, key=lambda g: float(g["n"]))


def source_text(g: dict) -> str:
    """A group's source as the report names it, with what its pretraining images were when the
    runs recorded it (``segmentation (synthetic medical images …)``, never "COCO" for those)."""
    kinds = [DATA_KINDS.get(k, k) for k in g.get("pretraining_data_kinds") or []]
    return source_label(g["source"]) + (f" (pretrained on {' and '.join(kinds)})" if kinds else "")


def _n_list(groups: list[dict]) -> str:
    return ", ".join(f"{g['size_tag']}" for g in groups)


def schedule_sentence(groups: list[dict]) -> str | None:
    """How long the models trained against nnU-Net's default, said plainly when it is a smoke
    test; None when the runs recorded no schedule or trained at least nnU-Net's default."""
    its = sorted({i for g in model_groups(groups) for i in g.get("training_iterations") or []})
    if not its:
        return None
    text = f"{its[0]:,}" if len(its) == 1 else f"{its[0]:,}–{its[-1]:,}"
    fraction = its[-1] / NNUNET_DEFAULT_ITERATIONS
    default = f"nnU-Net's default of {NNUNET_DEFAULT_ITERATIONS:,} (1000 epochs × 250)"
    if fraction < SMOKE_TEST_FRACTION:
        share = f"{fraction:.2%}" if fraction >= 1e-4 else "< 0.01%"
        return (f"This is a smoke test: each model trained {text} iterations, {share} of "
                f"{default}; the numbers show that the pipeline works, not how the sources "
                f"compare when trained in full.")
    if fraction < 1:
        return (f"Short schedule: each model trained {text} iterations, {fraction:.0%} of "
                f"{default}; the ranking may change with full training.")
    return None


def headline(summary: dict) -> str:
    """One paragraph: the best source per n with its Dice and RMS DTA, whether it beats the
    threshold baseline (paired rule) and reaches the observers (the evaluation's rule), on how
    many cases and observers, and how long the models trained."""
    groups = summary.get("groups") or []
    best = best_per_n(groups)
    if not best:
        return "No model has an evaluated case."
    cases = sorted({int(g["n_cases"]) for g in model_groups(groups)})
    folds = sorted({int(f) for g in model_groups(groups) for f in g.get("folds", [])})
    n_cases = f"{cases[0]}" if len(cases) == 1 else f"{cases[0]}–{cases[-1]}"
    per_n = "; ".join(
        f"n = {g['size_tag']}: {source_text(g)}, Dice {_mean(g, 'dice'):.3f}"
        + (f", RMS DTA {_mean(g, 'rms_dta_mm'):.2f} mm" if _mean(g, 'rms_dta_mm') is not None else "")
        for g in best)
    single = len({g["source"] for g in model_groups(groups)}) == 1
    parts = [f"{'The only source' if single else 'Best source'} per training-set size n by mean "
             f"Dice over {n_cases} validation case(s) of {len(folds)} fold(s): {per_n}."]
    for ref in reference_groups(groups):
        name = ref["source"]
        beats = [g for g in best if (g.get("vs_reference", {}).get(name) or {}).get("beats")]
        others = [g for g in best if g not in beats]
        verdict = ("the best model beats it at every n" if not others else
                   "the best model beats it at no n" if not beats else
                   f"the best model beats it at n = {_n_list(beats)}, not at n = "
                   f"{_n_list(others)}")
        parts.append(f"Against the {name} baseline (no learning; Dice {_mean(ref, 'dice'):.3f}, "
                     f"RMS DTA {_mean(ref, 'rms_dta_mm'):.2f} mm on {ref['n_cases']} case(s)), "
                     f"{verdict}, by the paired rule ({summary.get('reference_rule', 'see docs')}).")
    verdicts = {(v["source"], str(v["size_tag"]), v["plans"]): v
                for v in summary.get("human_level") or []}
    observers = summary.get("observers") or {}
    if verdicts:
        mine = [(g, verdicts.get((g["source"], str(g["size_tag"]), g["plans"]))) for g in best]
        human = [g for g, v in mine if v and v.get("human_level")]
        tested = [v for _, v in mine if v]
        obs_cases = sorted({int(v["n_cases"]) for v in tested})
        band = (observers.get("band") or {}).get("dice")
        verdict = ("at every n" if len(human) == len(best) else "at no n" if not human else
                   f"at n = {_n_list(human)} only")
        parts.append(
            f"Against the {observers.get('n_observers', '?')} observers (tested on "
            f"{'/'.join(map(str, obs_cases)) or '?'} observer case(s) with predictions"
            + (f"; the observers reach Dice {band[0]:.3f}–{band[1]:.3f} against the reference"
               if band else "") + f"), the best model is human level {verdict}. Rule: "
            f"{summary.get('verdict_rule', 'see docs/definitions.md#human-level')}.")
    else:
        parts.append("No observers were given, so there is no human-level verdict "
                     "(evaluate --observers DIR).")
    schedule = schedule_sentence(groups)
    if schedule:
        parts.append(schedule)
    return " ".join(parts)
