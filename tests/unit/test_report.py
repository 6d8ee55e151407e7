"""HTML report: embedded base64 PNG figures, PNG files beside it, partial inputs, refusals."""
from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import run_cli

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.fold_evaluation import evaluate_dataset
from nnunet_xfer.evaluation.observer_study import observer_study
from nnunet_xfer.evaluation.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))
        self.tables += tag == "table"


class _Cells(HTMLParser):
    """The rows (header and body cells as text) of the first table of a page."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._tables, self._cell = 0, None

    def handle_starttag(self, tag, attrs):
        self._tables += tag == "table"
        if self._tables == 1 and tag == "tr":
            self.rows.append([])
        if self._tables == 1 and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        if tag == "table":
            self._tables += 1  # only the first table

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _first_table(text: str) -> list[list[str]]:
    p = _Cells()
    p.feed(text)
    return p.rows


def _parse(path: Path) -> _Images:
    p = _Images()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _embedded_pngs(parsed: _Images) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert parsed.srcs and all(s.startswith(prefix) for s in parsed.srcs)
    return [base64.b64decode(s[len(prefix):]) for s in parsed.srcs]


@pytest.mark.slow
def test_full_report(fake_tree, tmp_path):
    base, env = fake_tree
    evaluation = evaluate_dataset("990", out=tmp_path / "eval", observers=base / "observers")
    html_path = tmp_path / "out" / "report.html"
    proc = run_cli("nnunet-xfer", "report", "-i", str(evaluation), "-o", str(html_path), env=env)
    assert str(html_path) in proc.stdout
    parsed = _parse(html_path)
    pngs = _embedded_pngs(parsed)
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    files = sorted((html_path.parent / "report_files").glob("*.png"))  # a folder of its own
    assert [f.name for f in files] == sorted(
        f"{k}.png" for k in ("headline", "williams", "bland_altman", "boxes", "gallery"))
    assert sorted(p.name for p in html_path.parent.iterdir()) == ["report.html", "report_files"]
    assert sorted(f.read_bytes() for f in files) == sorted(pngs)  # the same figures, embedded
    text = html_path.read_text(encoding="utf-8")
    assert parsed.tables >= 4  # summary, human level, missing runs, pretraining overlap
    assert "XferJigsawTrainer_n5" in text and "fold 0: case_000" in text  # the missing list
    assert "Grey band" in text and "http" not in text.replace("http-equiv", "")
    assert "Verdict rule" in text and "3 observer(s)" in text  # the rule beside the verdicts
    # the headline in words opens the report; the threshold baseline is its own row, never a
    # point of a curve, and each model says whether it beats it
    assert text.index('class="headline"') < text.index("<img")
    assert "Best source per training-set size n" in text and "Against the threshold baseline" in text
    assert "threshold (no learning)" in text and "beats threshold" in text
    assert "Dashed black line: the threshold baseline" in text
    assert "folds 0, 1" in text and "fold 0<" in text  # the fold lists, never a bare 0
    with pytest.raises(UserError, match="--overwrite"):
        write_report(evaluation, html_path)
    write_report(evaluation, html_path, overwrite=True)
    assert not [p for p in html_path.parent.iterdir() if p.name.startswith(".")]


def test_partial_inputs(fake_tree, tmp_path, monkeypatch):
    base, env = fake_tree
    # one source, one size, no observers
    results = tmp_path / "results"
    shutil.copytree(Path(env["nnUNet_results"]) / "Dataset990_Fake" /
                    "XferScratchTrainer_n5__nnUNetPlans__2d",
                    results / "Dataset990_Fake" / "XferScratchTrainer_n5__nnUNetPlans__2d")
    monkeypatch.setenv("nnUNet_results", str(results))
    one = evaluate_dataset("990", out=tmp_path / "one")
    report = write_report(one, tmp_path / "one.html")
    text = report.read_text(encoding="utf-8")
    assert len(_embedded_pngs(_parse(report))) == 4  # no Williams figure without observers
    assert "No observer results" in text and "Only one training-set size" in text
    # a run without any fold: evaluate refuses in one line naming what to do, writes nothing
    shutil.rmtree(results / "Dataset990_Fake" / "XferScratchTrainer_n5__nnUNetPlans__2d")
    (results / "Dataset990_Fake" / "XferRecTrainer_n10__nnUNetPlans__2d" / "fold_0").mkdir(
        parents=True)
    with pytest.raises(UserError, match="no prediction to evaluate.*--val"):
        evaluate_dataset("990", out=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    # and the report refuses an empty evaluation (one written by hand, or by an older version)
    shutil.copytree(one, tmp_path / "empty")
    cases = (tmp_path / "empty" / "cases.csv").read_text().splitlines()[0] + "\n"
    (tmp_path / "empty" / "cases.csv").write_text(cases)
    with pytest.raises(UserError, match="empty evaluation"):
        write_report(tmp_path / "empty", tmp_path / "empty.html")
    assert not (tmp_path / "empty.html").exists() and not (tmp_path / "empty_files").exists()


def test_observer_study_report_and_bad_input(observer_study_data, tmp_path):
    study = observer_study(observer_study_data / "reference", observer_study_data / "observers",
                           out=tmp_path / "study")
    report = write_report(study, tmp_path / "obs.html")
    assert len(_embedded_pngs(_parse(report))) == 1
    assert (tmp_path / "obs_files" / "williams.png").is_file()
    text = report.read_text(encoding="utf-8")
    assert "No muscle measures" in text
    # a figure and a compact table: one row per rater (the reference and 4 observers), in blocks,
    # the rule stated once under it rather than in every row
    head, *rows = _first_table(text)
    assert len(rows) == 5 and len({r[0] for r in rows}) == 5
    kind = [r[head.index("kind")] for r in rows]
    assert kind == ["reference annotation"] + ["observers, each against the others"] * 4
    assert {"1 − Dice ratio [95% CI]", "RMS DTA ratio [95% CI]", "Holm p", "human level"} <= set(
        head)
    assert text.count("human level if the rater") == 1
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="cases.csv"):
        write_report(tmp_path / "nothing", tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_legend_names_schedules_pretraining_overlap_and_mixed_plans(fake_tree, tmp_path,
                                                                     monkeypatch):
    """A run with explicit fine-tuning options, pretraining that saw validation cases, and a
    second plans identifier: summary.json, the legend notes and the headline all say so."""
    import json

    import pandas as pd
    base, env = fake_tree
    results = tmp_path / "results"
    shutil.copytree(Path(env["nnUNet_results"]), results)
    monkeypatch.setenv("nnUNet_results", str(results))
    dataset = results / "Dataset990_Fake"
    shutil.rmtree(dataset / "nnunet_xfer_evaluation", ignore_errors=True)
    splits = json.loads((Path(env["nnUNet_raw"]) / "Dataset990_Fake" / "splits_final.json")
                        .read_text())
    # fold 0 of jigsaw n10 loaded its fold's own entry (its training cases only), fold 1 the
    # entry of every case (the fake tree's record)
    (dataset / "XferJigsawTrainer_n10__nnUNetPlans__2d" / "fold_0" / "debug.json").write_text(
        json.dumps({"xfer_info": {"schedule": {"explicit": True, "lr_factor": 0.1,
                                               "warmup_fraction": 0.05, "freeze_epochs": 0},
                                  "transfer": {"scope": "fold", "fold": 0,
                                               "case_ids": splits[0]["train"]}}}))
    (dataset / "XferScratchTrainer_n5__nnUNetPlans__2d" / "fold_0" / "debug.json").write_text(
        json.dumps({"xfer_info": {"schedule": {"explicit": False, "lr_factor": 1.0}}}))
    (dataset / "XferJigsawTrainer_n5__nnUNetPlans__2d" / "fold_0" / "debug.json").write_text(
        "{not json")  # read defensively: what its pretraining saw is unknown
    shutil.copytree(dataset / "XferScratchTrainer_n5__nnUNetPlans__2d",
                    dataset / "XferScratchTrainer_n5__OtherPlans__2d")
    out = evaluate_dataset("990", out=tmp_path / "eval")
    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["source"], g["size_tag"], g["plans"]): g for g in summary["groups"]}
    assert summary["mixed_plans"] and summary["plans"] == ["OtherPlans", "nnUNetPlans"]
    assert groups[("jigsaw", "10", "nnUNetPlans")]["explicit_schedule"] == \
        "freeze_epochs=0, lr_factor=0.1, warmup_fraction=0.05"
    assert groups[("scratch", "5", "nnUNetPlans")]["explicit_schedule"] is None
    assert groups[("jigsaw", "5", "nnUNetPlans")]["explicit_schedule"] is None
    cases = pd.read_csv(out / "cases.csv", dtype={"size_tag": str})
    jig = cases[cases.source == "jigsaw"]
    assert not jig[jig.fold == 0].in_pretraining.any() and jig[jig.fold == 1].in_pretraining.all()
    assert groups[("jigsaw", "10", "nnUNetPlans")]["n_in_pretraining"] == 6
    text = write_report(out, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "explicit fine-tuning options" in text and "lr_factor=0.1" in text
    assert "mixes plans (OtherPlans, nnUNetPlans)" in text
    assert "† pretraining saw validation cases" in text and "jigsaw n=10 (6 of 11)" in text
    assert "pretraining unknown" in text and "jigsaw n=5 (6 of 6 cases)" in text
    # what each point saw, with this dataset's numbers: 6 training images per fold, 12 in all
    assert ("the pretraining of jigsaw also saw 6–12 images of this dataset per fold without "
            "labels") in text and "while scratch, nnU-Net default saw N" in text
    # rows on other cases than the rest are flagged
    assert "Rows rest on different cases" in text and "jigsaw n=5 has 6 of 12" in text


def test_legend_says_what_each_run_saw():
    """rec/jigsaw `_nN` runs also saw every training image of their fold without labels (the
    dataset's own numbers); the other sources saw N."""
    from nnunet_xfer.evaluation.report import _legend_notes
    groups = [{"source": "scratch", "size_tag": "5", "pretraining_images_per_fold": [0]},
              {"source": "rec", "size_tag": "5", "pretraining_images_per_fold": [150, 151]},
              {"source": "jigsaw", "size_tag": "5", "pretraining_images_per_fold": [151, 150]},
              {"source": "cls", "size_tag": "5", "pretraining_images_per_fold": [0]}]
    notes = _legend_notes(groups, {"fold_training_sizes": [150, 151, 150, 151]})
    assert notes == ["What each point saw of this dataset: every run trained on its n labelled "
                     "slices; the pretraining of reconstruction, jigsaw also saw 150–151 images of "
                     "this dataset per fold without labels (every training image of its fold), so "
                     "their n=N point rests on N labelled + 150–151 unlabelled images, while "
                     "scratch, classification saw N."]
    assert _legend_notes(groups[:1] + groups[3:], {}) == []


def test_comparison_overlays_labelled_evaluations(fake_tree, tmp_path, monkeypatch):
    from nnunet_xfer.evaluation import figures
    from nnunet_xfer.evaluation.report import comparison_labels, write_comparison
    base, env = fake_tree
    evaluation = evaluate_dataset("990", out=tmp_path / "a")
    other = shutil.copytree(evaluation, tmp_path / "b")
    legends = []
    save = figures._save

    def keep_legend(fig, path):
        legends.extend(t.get_text() for legend in fig.legends for t in legend.get_texts())
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_legend)
    html_path = tmp_path / "cmp.html"
    proc = run_cli("nnunet-xfer", "report", "-i", f"random={evaluation}", "-i", f"diverse={other}",
                   "-o", str(html_path), env=env)
    assert str(html_path) in proc.stdout
    text = html_path.read_text(encoding="utf-8")
    assert "comparison report" in text and ">random<" in text and ">diverse<" in text
    assert "validate on different cases" not in text  # the same folds and cases
    assert len(_embedded_pngs(_parse(html_path))) == 1
    assert [p.name for p in (tmp_path / "cmp_files").glob("*.png")] == ["headline.png"]
    # in-process: one curve per source and evaluation, each named "source — label"
    write_comparison([("random", evaluation), ("diverse", other)], tmp_path / "in.html")
    assert {"scratch — random", "scratch — diverse", "jigsaw — random †",
            "jigsaw — diverse †"} <= set(legends)  # † : the fake jigsaw entry saw every case
    # unlabelled folders take their dataset's name, numbered when equal
    assert comparison_labels([(None, evaluation), (None, other)]) == [
        "Dataset990_Fake (1)", "Dataset990_Fake (2)"]
    # evaluations of other cases are overlaid with a warning, never silently
    import pandas as pd
    cases = pd.read_csv(other / "cases.csv", dtype={"case_id": str})
    cases[cases.case_id != "case_011"].to_csv(other / "cases.csv", index=False)
    write_comparison([(None, evaluation), ("fewer", other)], tmp_path / "warn.html")
    assert "validate on different cases" in (tmp_path / "warn.html").read_text(encoding="utf-8")
    with pytest.raises(UserError, match="not an evaluation folder"):
        write_comparison([(None, evaluation), (None, tmp_path)], tmp_path / "x.html")
