"""`nnunet-xfer` command line: parse arguments, call the library, print.

Every command delegates to one library function; bad input surfaces as a :class:`UserError`
and is printed as one line with exit status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import errno
import shlex
import sys
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import (CHECKPOINT_FINAL, DEFAULT_CONFIGURATION, DEFAULT_PLANS,
                                image_file, label_file)
from nnunet_xfer.pretraining.defaults import (CHECKPOINT_EVERY, DEFAULT_ITERATIONS, DEFAULT_LR,
                                              DEFAULT_PERMUTATIONS)
from nnunet_xfer.sources import IMPORTED_SOURCES, PRETRAINED_SOURCES
from nnunet_xfer.study_grid import DEFAULT_FOLDS, DEFAULT_SEED, SIZES


def _sizes(text: str) -> list[int]:
    from nnunet_xfer.study_grid import parse_int_list
    try:
        return parse_int_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_phantom(a: argparse.Namespace) -> None:
    from nnunet_xfer.phantom.cohort import write_cohort
    write_cohort(Path(a.out), n_cases=a.cases, size=a.size, n_observers=a.observers,
                 n_observer_cases=a.observer_cases, seed=a.seed, overwrite=a.overwrite,
                 source_task=a.source_task, source_cases=a.source_cases)


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write a synthetic L3 cohort with simulated observers")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=40, help="number of subjects (default 40)")
    p.add_argument("--size", type=int, default=512, help="slice size in pixels (default 512)")
    p.add_argument("--observers", type=int, default=10, help="simulated observers (default 10)")
    p.add_argument("--observer-cases", type=int, default=20,
                   help="cases each observer delineates (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the cohort (default 0)")
    p.add_argument("--source-task", type=Path, metavar="DIR",
                   help="also write a segmentation source task (other subjects; organs, fat, bone; "
                        "no muscle label) to DIR, for `pretrain -s seg --data DIR` (default: none)")
    p.add_argument("--source-cases", type=int, default=100,
                   help="slices of the source task (default 100)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an OUT (and DIR) that phantom wrote (refused if it holds other "
                        "files)")
    p.set_defaults(func=_cmd_phantom)


def _cmd_convert(a: argparse.Namespace) -> None:
    from nnunet_xfer.dataset_conversion.convert import convert
    result = convert(cases_csv=a.cases, images_dir=a.images, masks_dir=a.masks,
                     dataset_id=a.dataset, name=a.name, n_folds=a.folds, sizes=a.sizes, seed=a.seed,
                     overwrite=a.overwrite, label_map=a.label_map, allow_non_hu=a.allow_non_hu,
                     per_size_datasets=a.per_size_datasets, selection=a.selection)
    print("\n".join([f"removed {p} (--overwrite)" for p in result.removed]
                    + [f"wrote {p}" for p in result.datasets]))


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="build an nnU-Net raw dataset with folds and nested subsets")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cases", type=Path,
                     help="case manifest CSV: case_id,image,mask [,slice_index | "
                          "vertebra_mask,vertebra_label] [,height_m,sex,observer]")
    src.add_argument("--images", type=Path, help="folder of images (with --masks)")
    p.add_argument("--masks", type=Path, help="folder of masks matched to --images by file name")
    p.add_argument("-d", "--dataset", type=int, required=True, help="nnU-Net dataset id")
    p.add_argument("-n", "--name", default="L3", help="dataset name (default L3)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                   help="cross-validation folds (default 4); 0: no folds or subsets, a dataset of "
                        "1-3 cases to predict on only")
    p.add_argument("--sizes", type=_sizes, default=list(SIZES),
                   help="nested training-subset sizes (default 5,10,25,50,75,100,125)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of folds and subsets (default {DEFAULT_SEED})")
    p.add_argument("--selection", type=Path, default=None, metavar="FILE",
                   help="take each fold's subsets from this selection file (`nnunet-xfer select`) "
                        "instead of the seeded random draw (default: none, random)")
    p.add_argument("--label-map", default=None,
                   help="mask labels that are muscle, e.g. '1', '1,2,3,4' or '1,86-89' "
                        "(default: mask must be 0/1)")
    p.add_argument("--allow-non-hu", action="store_true", help="accept 8-bit / non-HU images")
    p.add_argument("--per-size-datasets", action="store_true",
                   help="also write Dataset<ID+k>_<Name>_n<N> per subset size (nnU-Net baselines)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset with this id that convert wrote (refused if it holds "
                        "other files) and remove its $nnUNet_preprocessed folder")
    p.set_defaults(func=_cmd_convert)


def _cmd_select(a: argparse.Namespace) -> None:
    from nnunet_xfer.selection import select_next, select_subsets, write_manifest
    if a.pool is None:
        if a.dataset is None:
            raise UserError("give -d DATASET (order each fold's training cases) or --pool DIR "
                            "(the next slices of an unlabelled pool)")
        for given, option in ((a.k, "-k"), (a.trainer, "-tr"), (a.folds, "-f")):
            if given is not None:
                raise UserError(f"{option} goes with --pool DIR")
        selection = select_subsets(a.dataset, strategy=a.strategy, features=a.features,
                                   plans=a.plans, configuration=a.configuration, seed=a.seed,
                                   device=a.device)
        path = selection.write(a.output, overwrite=a.overwrite)
        sizes = {len(o) for o in selection.order.values()}
        print(f"wrote {path}: {selection.strategy} order of the training cases of "
              f"{len(selection.order)} folds ({'/'.join(map(str, sorted(sizes)))} cases each)\n"
              f"use it with:  {selection.convert_command(path)}")
        return
    result = select_next(a.pool, k=10 if a.k is None else a.k, strategy=a.strategy,
                         dataset=a.dataset, trainer=a.trainer, plans=a.plans,
                         configuration=a.configuration, folds=a.folds, features=a.features,
                         seed=DEFAULT_SEED if a.seed is None else a.seed, device=a.device)
    path = write_manifest(a.output, result, overwrite=a.overwrite)
    if result.already_annotated:
        print(f"left out {len(result.already_annotated)} pool case(s) the dataset already holds")
    for row in result.table.itertuples():
        print(f"{row.rank:4d}  {row.case_id}" + ("" if row.score != row.score else f"  {row.score:.4f}"))
    print(f"wrote {path}: the next {len(result.table)} case(s) to annotate ({a.strategy})")


def _add_select(sub) -> None:
    from nnunet_xfer.selection import STRATEGIES
    p = sub.add_parser("select", help="choose which slices to annotate: nested subsets per fold "
                                      "(for convert --selection) or the next k of a pool")
    p.add_argument("-d", "--dataset", default=None,
                   help="converted dataset id or name: order each fold's training cases (with "
                        "--pool: the slices already annotated, and the model's dataset)")
    p.add_argument("--strategy", choices=STRATEGIES, default="random",
                   help="random: the seeded draw convert makes; diverse: greedy k-centre; "
                        "uncertain: where a trained fold ensemble disagrees most (--pool only) "
                        "(default random)")
    p.add_argument("--features", default=None,
                   help="diverse: 'histogram' (HU histograms, no model) or a pretrained source "
                        "whose store entry's encoder measures distances, e.g. rec (default histogram)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the selection JSON (with -d) or the manifest CSV of the next cases (with --pool)")
    p.add_argument("--pool", type=Path, default=None,
                   help="folder of unlabelled 2D slices to choose the next cases from "
                        "(default: none, order the dataset's folds)")
    p.add_argument("-k", type=int, default=None,
                   help="--pool: how many cases to choose (default 10)")
    p.add_argument("-tr", "--trainer", default=None,
                   help="uncertain: the trained model, e.g. XferSegTrainer_n10 (default: none)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="uncertain: folds of the ensemble (default: every finished fold)")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS,
                   help=f"plans of the model or store entry (default {DEFAULT_PLANS})")
    p.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION,
                   help=f"configuration of the model or store entry (default {DEFAULT_CONFIGURATION})")
    p.add_argument("--seed", type=int, default=None,
                   help="random: the draw's seed (default: the dataset's convert seed; "
                        f"{DEFAULT_SEED} for a pool)")
    p.add_argument("--device", default=None,
                   help="cuda, cpu or mps for models and encoders (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output file that select wrote before (nothing else)")
    p.set_defaults(func=_cmd_select)


def _cmd_env(a: argparse.Namespace) -> None:
    from nnunet_xfer.trainers import environment_exports
    print(environment_exports())


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print the export line(s) that let nnU-Net find the trainers")
    p.set_defaults(func=_cmd_env)


def _cmd_pretrain(a: argparse.Namespace) -> None:
    from nnunet_xfer.pretraining.run import PretrainConfig, PretrainInterrupted, pretrain
    config = PretrainConfig(dataset=a.dataset, source=a.source, plans=a.plans,
                            configuration=a.configuration, fold=a.fold, scope=a.scope, data=a.data,
                            weights=a.weights, iterations=a.iterations, batch_size=a.batch_size,
                            lr=a.lr, permutations=a.permutations, seed=a.seed,
                            checkpoint_every=a.checkpoint_every, device=a.device)
    try:
        path = pretrain(config, resume=a.resume, overwrite=a.overwrite, keep_state=a.keep_state)
    except PretrainInterrupted as e:
        print(f"nnunet-xfer pretrain: interrupted by {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(f"wrote {path}")


def _add_pretrain(sub) -> None:
    from nnunet_xfer.sources import spec
    target = "/".join(n for n in PRETRAINED_SOURCES if spec(n).reads_target_images)
    p = sub.add_parser("pretrain", help="pretrain a source task for the planned network")
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name")
    p.add_argument("-s", "--source", required=True, choices=PRETRAINED_SOURCES,
                   help=f"source task: {', '.join(PRETRAINED_SOURCES)} (docs/pretraining.md)")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS,
                   help=f"plans of the network to pretrain (default {DEFAULT_PLANS})")
    p.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION,
                   help=f"its configuration (default {DEFAULT_CONFIGURATION})")
    p.add_argument("--fold", type=int, default=None,
                   help=f"{target}: pretrain on this fold's training cases only (the entry "
                        "trainers of this fold load)")
    p.add_argument("--scope", choices=("fold", "all"), default=None,
                   help=f"{target}: 'all' pretrains on every case, validation cases included "
                        "(recorded in the entry); 'fold' needs --fold")
    p.add_argument("--data", type=Path, default=None,
                   help="source data (VOC folder / ImageFolder root / CT images); never the "
                        "target dataset")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"published checkpoint file: {'/'.join(IMPORTED_SOURCES)} (required, never "
                        "downloaded), or torchvision's file for cls/seg with the package's plans "
                        "(default: torch hub's cache, else a download)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"training iterations (default {DEFAULT_ITERATIONS})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per iteration (default: the plans' batch size)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"AdamW learning rate, poly decay (default {DEFAULT_LR:g})")
    p.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS,
                   help=f"jigsaw permutation classes (default {DEFAULT_PERMUTATIONS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                   help="iterations between training-state checkpoints, for --resume "
                        f"(default {CHECKPOINT_EVERY})")
    p.add_argument("--resume", action="store_true",
                   help="continue from the saved training state <source>.resume.pth (or extend "
                        "a run finished with --keep-state to more --iterations)")
    p.add_argument("--keep-state", action="store_true",
                   help="keep <source>.resume.pth after the run finishes, so that --resume can "
                        "extend it later (default: removed once the entry is written)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the entry this command wrote before (nothing else)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_plan(a: argparse.Namespace) -> None:
    from nnunet_xfer.planning import write_plans_variant
    path = write_plans_variant(dataset=a.dataset, arch=a.arch, source_plans=a.plans,
                               overwrite=a.overwrite)
    print(f"wrote {path}")


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="write a plans variant with one of the package's networks")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--arch", required=True,
                   help="e.g. fcn_resnet50, unet_resnet34, unetr_vit_b16 (docs/architectures.md)")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS,
                   help=f"plans to derive from (default {DEFAULT_PLANS})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a variant plan wrote before (never a plans file of yours)")
    p.set_defaults(func=_cmd_plan)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {text!r}")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a margin in [0, 1], got {text!r}")
    return value


def _old_margin(text: str) -> float:
    raise argparse.ArgumentTypeError(
        "--wi-margin was replaced by --ni-margin: the human-level rule now compares disagreements "
        "(1 - Dice, RMS DTA), human level when their ratio to the observers' is below 1 + margin "
        "(default 0.25; docs/definitions.md#human-level)")


_DISAGREEMENT_LABELS = {"dice": "1-Dice", "rms_dta_mm": "RMS DTA"}


def _print_verdicts(verdicts: list[dict]) -> None:
    for v in verdicts:
        ratio = "; ".join(f"{_DISAGREEMENT_LABELS.get(m, m)} ratio {w[0]:.2f} [{w[1]:.2f}, {w[2]:.2f}]"
                          for m, w in v["ratio"].items())
        print(f"  {v['label']}: {'human level' if v['human_level'] else 'not human level'} "
              f"({ratio}; Holm p {v['p_holm']:.3g}; {v['n_cases']} cases)")
    if verdicts:  # the rule of the group with the most cases (the others: fewer, said above)
        print(f"  rule: {max(verdicts, key=lambda v: v['n_cases'])['rule']}")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from nnunet_xfer.evaluation.fold_evaluation import evaluate
    result = evaluate(dataset=a.dataset, plans=a.plans, configuration=a.configuration,
                      out=a.output, observers=a.observers, overwrite=a.overwrite,
                      workers=a.workers, margin=a.ni_margin)
    print(f"evaluated {result.n_rows} case(s) of {result.n_runs} run(s), {result.n_failed} "
          f"failed; {len(result.incomplete)} run(s) incomplete; wrote {result.out}")
    _print_verdicts([{**v, "label": f"{v['source']} n={v['size_tag']} ({v['plans']})"}
                     for v in result.verdicts])


def _add_evaluation_options(p) -> None:
    p.add_argument("--workers", type=_workers, default=None,
                   help="processes scoring the cases (default: the available cores); "
                        "the output does not depend on it")
    p.add_argument("--ni-margin", type=_margin, default=None,
                   help="human level when the model's disagreement with the observers is, with "
                        "95%% confidence, below (1 + this) x theirs with each other (default 0.25)")
    p.add_argument("--wi-margin", type=_old_margin, default=None, help=argparse.SUPPRESS)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate every Xfer run's folds of a dataset")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-p", "--plans", default=None, help="only runs with these plans (default all)")
    p.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION,
                   help=f"configuration of the runs (default {DEFAULT_CONFIGURATION})")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output folder (default $nnUNet_results/<Dataset>/nnunet_xfer_evaluation)")
    p.add_argument("--observers", type=Path, default=None,
                   help="observer folder (>= 3 observers): add the human-level verdicts")
    _add_evaluation_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation in OUTPUT (nothing else is deleted)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_observers(a: argparse.Namespace) -> None:
    from nnunet_xfer.evaluation.observer_study import run_observer_study
    study = run_observer_study(reference=a.reference, observers=a.observers,
                               predictions=a.predictions, name=a.name, out=a.output,
                               label=a.label, images=a.images, overwrite=a.overwrite,
                               workers=a.workers, margin=a.ni_margin)
    print(f"observer study of {len(study.cases)} case(s); wrote {study.out}")
    from nnunet_xfer.evaluation.raters import verdict_of
    by_rater: dict[str, list[dict]] = {}
    for r in study.williams:
        by_rater.setdefault(r["rater"], []).append(r)
    _print_verdicts([{"label": rater, **verdict_of(rows)} for rater, rows in by_rater.items()])


def _add_observers(sub) -> None:
    p = sub.add_parser("observers", help="inter-observer study: human-level test and STAPLE")
    p.add_argument("--reference", type=Path, required=True, help="reference masks folder")
    p.add_argument("--observers", type=Path, required=True, help="one sub-folder per observer")
    p.add_argument("--predictions", type=Path, default=None, help="model predictions folder")
    p.add_argument("--name", default="model", help="rater name for --predictions (default model)")
    p.add_argument("--images", type=Path, default=None, help="CT images (for SMA and SMD)")
    p.add_argument("--label", type=int, default=1, help="muscle label value (default 1)")
    p.add_argument("-o", "--output", type=Path, required=True, help="a new output folder")
    _add_evaluation_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier observer study in OUTPUT (nothing else is deleted)")
    p.set_defaults(func=_cmd_observers)


def _cmd_measure(a: argparse.Namespace) -> None:
    label_map = a.label_map if a.label is None else str(a.label)
    if a.cases is not None:
        if a.images is not None or a.masks is not None:
            raise UserError("give --cases CSV (CT studies) or --images DIR --masks DIR, not both")
        if a.dataset is None or a.trainer is None:
            raise UserError("--cases needs the model: -d DATASET -tr TRAINER [-p PLANS] [-f FOLDS]")
        if label_map is not None:
            raise UserError("--label-map applies to --masks; with --cases the model's own muscle "
                            "label is used")
        _measure_studies(a)
        return
    if a.images is None or a.masks is None:
        raise UserError("give --cases CSV (CT studies and a model), or --images DIR --masks DIR")
    if (a.dataset is not None or a.trainer is not None or a.l3 is not None or a.corrected
            or a.no_mirroring):
        raise UserError("-d/-tr/--l3/--corrected/--no-mirroring go with --cases; "
                        "--images/--masks measures existing masks")
    from nnunet_xfer.dataset_conversion.prepare import parse_label_map
    from nnunet_xfer.evaluation.measures import measure_folder
    measure_folder(images=a.images, masks=a.masks, out_csv=a.output, heights=a.heights,
                   label_map=parse_label_map(label_map), overwrite=a.overwrite,
                   allow_non_hu=a.allow_non_hu)


def _measure_studies(a: argparse.Namespace) -> None:
    from tqdm import tqdm
    from nnunet_xfer.clinical.api import MeasureConfig, run_measure
    config = MeasureConfig(
        cases=a.cases, out=a.output, dataset=a.dataset, trainer=a.trainer, plans=a.plans,
        configuration=a.configuration, folds=a.folds, device=a.device, l3=a.l3 or "manifest",
        low_smi_cutoffs=a.low_smi_cutoffs, heights=a.heights, allow_non_hu=a.allow_non_hu,
        checkpoint=a.checkpoint, corrected=a.corrected, mirroring=not a.no_mirroring)
    result = run_measure(
        config, overwrite=a.overwrite,
        on_error=lambda msg: tqdm.write(f"nnunet-xfer measure: error: {msg}", file=sys.stderr))
    print(f"measured {result.n_cases - result.n_failed} of {result.n_cases} case(s): {result.out}")
    if result.failed:
        print(f"nnunet-xfer measure: {result.n_failed} of {result.n_cases} cases failed "
              f"(see {result.out}/measures.csv)", file=sys.stderr)
        raise SystemExit(1)


def _add_measure(sub) -> None:
    p = sub.add_parser("measure", help="muscle area, density, IMAT and SMI per case "
                                       "(from CT studies with a trained model, or from masks)")
    p.add_argument("--cases", type=Path, default=None,
                   help="CT studies: convert's manifest without a mask column (case_id,image "
                        "[,slice_index | instance_number | vertebra_mask,vertebra_label] "
                        "[,series_uid] [,height_m,sex,weight_kg])")
    p.add_argument("--images", type=Path, default=None,
                   help=f"CT slices in HU: {image_file('<case>')} (nnU-Net style) or "
                        f"{label_file('<case>')}")
    p.add_argument("--masks", type=Path, default=None,
                   help=f"muscle masks {label_file('<case>')}, e.g. nnUNetv2_predict output")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (with --cases) or CSV (with --images/--masks)")
    p.add_argument("-d", "--dataset", default=None, help="model: nnU-Net dataset id or name")
    p.add_argument("-tr", "--trainer", default=None, help="model: trainer, e.g. XferSegTrainer_n125")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="model: plans (default nnUNetPlans)")
    p.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION, help="model: configuration (default 2d)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="model: folds to ensemble (default: every finished fold)")
    p.add_argument("--no-mirroring", action="store_true",
                   help="model: skip test-time mirroring (nnUNetv2_predict --disable_tta): about "
                        "4x faster per slice (default: mirroring on; cost in docs/measure.md)")
    p.add_argument("--checkpoint", default=CHECKPOINT_FINAL, help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="cuda, cpu or mps (default: cuda if available)")
    p.add_argument("--l3", choices=["auto"], default=None,
                   help="auto: find L3 with TotalSegmentator (pip install 'nnunet_xfer[totalseg]') "
                        "for cases without slice_index / vertebra_mask")
    p.add_argument("--low-smi-cutoffs", choices=["prado2008", "martin2013"], default=None,
                   help="add low-SMI verdicts by these published cut-offs (docs/measure.md)")
    p.add_argument("--heights", type=Path, default=None, help="CSV with case_id,height_m")
    p.add_argument("--corrected", type=Path, default=None, metavar="DIR",
                   help="with --cases: edited masks <case>.nii.gz / .seg.nrrd / .dcm (DICOM-SEG) "
                        "measured instead of the model's, each audited (default: none)")
    p.add_argument("--label-map", default=None,
                   help="mask labels that are muscle, e.g. '1' or '1,2,3,4' (default: masks must "
                        "be binary 0/1); the same option as convert's")
    p.add_argument("--label", type=int, default=None, help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--allow-non-hu", action="store_true", help="accept 8-bit / non-HU images")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier measure output (only what measure wrote)")
    p.set_defaults(func=_cmd_measure)


def _labelled_folder(text: str) -> tuple[str | None, Path]:
    """``-i DIR`` or ``-i LABEL=DIR`` (a LABEL holds no '/'; an existing DIR is taken whole)."""
    label, sep, folder = text.partition("=")
    if sep and label and "/" not in label and not Path(text).exists():
        return label, Path(folder)
    return None, Path(text)


def _cmd_report(a: argparse.Namespace) -> None:
    from nnunet_xfer.evaluation.report import write_comparison, write_report
    from nnunet_xfer.layout import report_figures_folder
    inputs = [_labelled_folder(t) for t in a.input]
    if len(inputs) == 1:
        path = write_report(inputs[0][1], a.output, overwrite=a.overwrite)
    else:
        path = write_comparison(inputs, a.output, overwrite=a.overwrite)
    print(f"report: {path} (figures in {report_figures_folder(path)})")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report with figures from an evaluation folder")
    p.add_argument("-i", "--input", action="append", required=True, metavar="[LABEL=]DIR",
                   help="evaluation folder; repeat it (-i random=A -i diverse=B) to overlay the "
                        "curves of several, each labelled (default label: its dataset name)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="report .html (its PNGs go into <name>_files/ beside it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier report of this name (and its <name>_files/)")
    p.set_defaults(func=_cmd_report)


def _grid(a: argparse.Namespace):
    """The experiment's :class:`Grid` from the parsed options (unset ones keep its defaults)."""
    from nnunet_xfer.experiment import Grid
    given = {"plans": a.plans, "configuration": a.configuration, "sizes": a.sizes,
             "folds": a.folds, "device": a.device, "observers": a.observers,
             "pretrain_iterations": a.pretrain_iterations, "pretrain_scope": a.pretrain_scope,
             "arch": a.arch,
             "sources": None if a.sources is None
             else [s.strip() for s in a.sources.split(",") if s.strip()]}
    return Grid(dataset=a.dataset, **{k: v for k, v in given.items() if v is not None})


def _cmd_experiment(a: argparse.Namespace) -> None:
    from nnunet_xfer import experiment
    grid = _grid(a)
    if a.dry_run:
        print(experiment.dry_run_text(experiment.dry_run(grid)))
    elif a.slurm is not None:
        script = experiment.write_slurm(grid, a.slurm, a.slurm_args, a.overwrite,
                                        command_line="nnunet-xfer " + shlex.join(sys.argv[1:]))
        print(f"wrote {script.path}: {script.n_train} training runs as one job array\n"
              f"submit it from a login node with:  bash {script.path}")
    else:
        outcome = experiment.run(grid)
        for r in outcome.results:
            print(f"{r.status:8s} {r.step.name}" + (f" ({r.seconds:.0f} s)" if r.seconds else ""))
        if outcome.table is not None:
            print(experiment.format_table(outcome.table))
        if outcome.report is not None:
            print(f"report: {outcome.report}")
        if outcome.failure():
            raise UserError(outcome.failure())


def _add_experiment(sub) -> None:
    from nnunet_xfer.experiment.grid import PRETRAIN_SCOPES, Grid
    default = Grid.default
    p = sub.add_parser("experiment", help="the study's grid: dry run, local run or SLURM script")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-p", "--plans", default=None,
                   help=f"plans of the trainings; with --arch the plans the variant is derived "
                        f"from (default {default('plans')})")
    p.add_argument("-c", "--configuration", default=None,
                   help=f"configuration of the trainings (default {default('configuration')})")
    p.add_argument("--sources", default=None,
                   help=f"source tasks, comma-separated (default {','.join(default('sources'))}); "
                        f"also {', '.join(IMPORTED_SOURCES)} with --arch of their network and "
                        f"$NNUNET_XFER_<SOURCE>_WEIGHTS (docs/experiment.md)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help=f"training-subset sizes (default {','.join(map(str, default('sizes')))})")
    p.add_argument("--folds", type=_sizes, default=None,
                   help=f"folds, comma-separated (default {','.join(map(str, default('folds')))})")
    p.add_argument("--device", default=None,
                   help=f"cuda, cpu or mps (default {default('device')})")
    p.add_argument("--observers", type=Path, default=None,
                   help="observer folder passed to `nnunet-xfer evaluate --observers`")
    p.add_argument("--pretrain-iterations", type=int, default=None,
                   help="iterations per pretraining (default: the pretrain command's)")
    p.add_argument("--pretrain-scope", choices=PRETRAIN_SCOPES, default=None,
                   help="sources that read the dataset's own images (rec, jigsaw): 'fold' "
                        "pretrains once per fold on its training images only; 'all' once on "
                        f"every image, validation cases included (default {default('pretrain_scope')})")
    p.add_argument("--arch", default=None,
                   help="one of the package's networks (e.g. unet_resnet34, fcn_resnet50, "
                        "unetr_vit_b16): plan it and run every source on it (the paper's "
                        "set-up; default: the plans' own network)")
    p.add_argument("--slurm-args", default="",
                   help="extra #SBATCH options for every job, e.g. '--partition=gpu --gres=gpu:1' "
                        "(default: none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a --slurm FILE that experiment wrote (never another file)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print every step as a shell command")
    mode.add_argument("--run", action="store_true",
                      help="run the steps here (skips finished runs, resumes interrupted ones)")
    mode.add_argument("--slurm", type=Path, metavar="FILE", help="write a SLURM submission script")
    p.set_defaults(func=_cmd_experiment)


def _cmd_demo(a: argparse.Namespace) -> None:
    from nnunet_xfer.demo import demo_summary, run_demo
    print(demo_summary(run_demo(out=a.output, quick=a.quick, overwrite=a.overwrite,
                                observer_model_name=a.observer_model)))


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a synthetic cohort, CPU only")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"),
                   help="output folder (default demo_output)")
    p.add_argument("--quick", action="store_true", help="tiny version (used by the tests)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's output folder (and its Dataset990_XferDemo)")
    p.add_argument("--observer-model", default=None, metavar="TRAINER",
                   help="the model of the observer study, e.g. XferScratchTrainer_n10 (default: "
                        "the best by mean Dice, as the report picks it)")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The full `nnunet-xfer` parser."""
    from nnunet_xfer import __version__
    parser = argparse.ArgumentParser(
        prog="nnunet-xfer",
        description="Transfer learning for L3 muscle segmentation inside nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_phantom, _add_convert, _add_select, _add_env, _add_pretrain, _add_plan, _add_evaluate,
                _add_observers, _add_measure, _add_report, _add_experiment, _add_demo):
        add(sub)
    return parser


#: Errors of the machine rather than of the input, with what to do about them.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some disk space or write elsewhere; nothing half-written was left",
    errno.EDQUOT: "your disk quota is full: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check the permissions, or write elsewhere",
    errno.EPERM: "check the permissions, or write elsewhere",
}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nnunet-xfer` console script."""
    import warnings
    warnings.formatwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"nnunet-xfer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the file system, not a bug: one line (no traceback)
        if e.errno not in _ENVIRONMENT_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"nnunet-xfer {args.command}: error: {e.strerror or e}{where}; "
              f"{_ENVIRONMENT_ERRORS[e.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # experiment --run says which signal and what it stopped
        print(f"nnunet-xfer {args.command}: interrupted" + (f": {e}" if str(e) else ""),
              file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
