"""An offline segmentation source task: the phantom's *other* structures as a 2D nnU-Net raw
dataset (``nnunet-xfer phantom OUT --source-task DIR``), which ``nnunet-xfer pretrain -s seg
--data DIR`` reads.

Its subjects come from their own random stream (``SOURCE_STREAM``), so none of its images is one
of the target cohort's, whatever the seeds; its labels are the structures of
:data:`~nnunet_xfer.phantom.structures.SOURCE_CLASSES` — fat compartments, bone, bowel, kidneys,
liver and spleen, vessels — and never muscle of any kind.

Layout::

    DIR/dataset.json                   channel 0 "CT", the source classes, file ending .nii.gz,
                                       and nnunet_xfer.data_kind = "synthetic-medical"
    DIR/imagesTr/ORG-0000_0000.nii.gz  2D int16 HU, spacing set
    DIR/labelsTr/ORG-0000.nii.gz       uint8 source-task classes, same geometry
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_xfer.atomic import Claim, check_replaceable, owned_output
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import fingerprint
from nnunet_xfer.imaging.names import NNUNET_ENDING
from nnunet_xfer.layout import DATASET_JSON, image_file, label_file
from nnunet_xfer.phantom.cohort import write_image
from nnunet_xfer.phantom.structures import SOURCE_CLASSES, source_labels
from nnunet_xfer.phantom.subject import make_subject
from nnunet_xfer.sources import DATA_KIND_KEY, DATA_KIND_SYNTHETIC_MEDICAL

#: Random stream of the source-task subjects (the cohort's subjects use none).
SOURCE_STREAM = 9_000_011
#: The command named in the output marker.
COMMAND = "phantom --source-task"
FILE_ENDING = NNUNET_ENDING


def source_case_id(index: int, n_cases: int = 100) -> str:
    """``ORG-0000``, ``ORG-0001``, …"""
    return f"ORG-{index:0{max(4, len(str(n_cases - 1)))}d}"


def pixel_digest(array: np.ndarray) -> str:
    """The content fingerprint of an image array (:func:`nnunet_xfer.imaging.fingerprint`: shape
    and voxel values, whatever the type), the identity every "is this the target?" check uses."""
    return fingerprint(array)


def write_source_task(out: Path | Claim, n_cases: int = 100, size: int = 512, seed: int = 0,
                      overwrite: bool = False, exclude: set[str] | frozenset = frozenset()) -> Path:
    """Write ``n_cases`` source-task slices of ``size``² to ``out``; returns ``out``.

    ``exclude`` holds :func:`pixel_digest` values of images the source must not contain (the
    target cohort's): a clash stops the run (it cannot happen with distinct streams; the check
    makes the promise verifiable). Built in a hidden folder and swapped into place like the
    cohort; ``out`` may be the output guard's claim taken before the cohort was written.
    """
    if n_cases < 1:
        raise UserError(f"--source-cases must be at least 1 (got {n_cases})")
    claim = out if isinstance(out, Claim) else check_replaceable(out, COMMAND, overwrite)
    with owned_output(claim) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for i in tqdm(range(n_cases), desc="source task", unit="case", mininterval=1.0,
                      disable=None):  # a bar on a terminal only
            cid = source_case_id(i, n_cases)
            subj = make_subject(i, size=size, seed=seed, stream=SOURCE_STREAM)
            if pixel_digest(subj.image) in exclude:
                raise UserError(f"source-task image {cid} equals an image of the target cohort; "
                                f"choose another --seed")
            write_image(subj.image, subj.spacing, tmp / "imagesTr" / image_file(cid, 0, FILE_ENDING))
            write_image(source_labels(subj.tissue), subj.spacing,
                        tmp / "labelsTr" / label_file(cid, FILE_ENDING))
        (tmp / DATASET_JSON).write_text(json.dumps(dataset_json(n_cases, size, seed), indent=2))
    return claim.path


def dataset_json(n_cases: int, size: int, seed: int) -> dict:
    """The source task's nnU-Net ``dataset.json``, saying what made it."""
    return {
        "channel_names": {"0": "CT"}, "labels": dict(SOURCE_CLASSES), "numTraining": n_cases,
        "file_ending": FILE_ENDING, "name": "PhantomStructures",
        "description": "Synthetic L3 CT slices (nnunet-xfer phantom --source-task) labelled with "
                       "fat compartments, bone, bowel, kidneys, liver/spleen and vessels; no "
                       "muscle label",
        "nnunet_xfer": {DATA_KIND_KEY: DATA_KIND_SYNTHETIC_MEDICAL,
                        "command": f"nnunet-xfer {COMMAND}", "seed": seed,
                        "stream": SOURCE_STREAM, "size": size},
    }
