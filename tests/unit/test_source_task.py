"""`nnunet-xfer phantom OUT --source-task DIR`: a segmentation source of the phantom's other
structures — no muscle label, none of the target cohort's images, another random stream."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.phantom import make_subject, write_cohort
from nnunet_xfer.phantom import structures as st
from nnunet_xfer.phantom.source_task import SOURCE_STREAM, source_case_id
from nnunet_xfer.sources import DATA_KIND_SYNTHETIC_MEDICAL


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    write_cohort(root / "cohort", n_cases=4, size=48, n_observers=0, n_observer_cases=0, seed=2,
                 source_task=root / "source", source_cases=5)
    return root / "cohort", root / "source"


def test_layout_and_dataset_json(written):
    _, source = written
    ds = json.loads((source / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == st.SOURCE_CLASSES and ds["numTraining"] == 5
    assert ds["nnunet_xfer"]["data_kind"] == DATA_KIND_SYNTHETIC_MEDICAL
    assert ds["nnunet_xfer"]["stream"] == SOURCE_STREAM and ds["nnunet_xfer"]["seed"] == 2
    ids = [source_case_id(i, 5) for i in range(5)]
    assert sorted(p.name for p in (source / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in ids]
    assert sorted(p.name for p in (source / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ids]
    img = sitk.ReadImage(str(source / "imagesTr" / f"{ids[0]}_0000.nii.gz"))
    lab = sitk.ReadImage(str(source / "labelsTr" / f"{ids[0]}.nii.gz"))
    assert img.GetSpacing() == lab.GetSpacing() and img.GetSize() == lab.GetSize() == (48, 48)
    assert _arr(source / "imagesTr" / f"{ids[0]}_0000.nii.gz").dtype == np.int16


def test_no_muscle_label_anywhere(written):
    _, source = written
    assert not [name for name in st.SOURCE_CLASSES if "muscle" in name]
    values = set()
    for i, f in enumerate(sorted((source / "labelsTr").iterdir())):
        labels = _arr(f)
        values |= set(np.unique(labels).tolist())
        subject = make_subject(i, size=48, seed=2, stream=SOURCE_STREAM)
        # wherever muscle of any kind is, the source label is background
        muscle = np.isin(subject.tissue, [st.MUSCLE, st.CRUS, st.ARM_MUSCLE])
        assert muscle.any() and not labels[muscle].any()
        np.testing.assert_array_equal(labels, st.source_labels(subject.tissue))
    assert values <= set(st.SOURCE_CLASSES.values())
    assert {st.SOURCE_CLASSES[k] for k in ("subcutaneous_fat", "visceral_fat", "bone", "bowel")} <= values


def test_never_a_target_image(written):
    cohort, source = written
    target = [_arr(p) for p in sorted((cohort / "images").iterdir())]
    images = [_arr(p) for p in sorted((source / "imagesTr").iterdir())]
    for img in images:
        assert not any(img.shape == t.shape and np.array_equal(img, t) for t in target)
    # another stream, not another seed: the cohort of any seed never holds these subjects
    same_seed = make_subject(0, size=48, seed=2)
    assert not np.array_equal(images[0], same_seed.image)
    np.testing.assert_array_equal(images[0], make_subject(0, size=48, seed=2,
                                                          stream=SOURCE_STREAM).image)


def test_clash_with_a_target_image_is_refused(tmp_path, monkeypatch):
    from nnunet_xfer.phantom import source_task
    from nnunet_xfer.phantom.source_task import pixel_digest, write_source_task
    clash = pixel_digest(make_subject(1, size=40, seed=0, stream=SOURCE_STREAM).image)
    with pytest.raises(UserError, match="equals an image of the target"):
        write_source_task(tmp_path / "s", n_cases=2, size=40, exclude={clash})
    assert not (tmp_path / "s").exists() and source_task.SOURCE_STREAM == SOURCE_STREAM


def test_cli_source_task_and_bad_arguments(tmp_path):
    out, src = tmp_path / "c", tmp_path / "s"
    run_cli("nnunet-xfer", "phantom", str(out), "--cases", "2", "--size", "40", "--observers", "0",
            "--source-task", str(src), "--source-cases", "2")
    assert len(list((src / "labelsTr").iterdir())) == 2
    # an existing source folder is refused without --overwrite, before the cohort is written
    proc = run_cli("nnunet-xfer", "phantom", str(tmp_path / "c2"), "--cases", "2", "--size", "40",
                   "--source-task", str(src), check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c2").exists()
    for kwargs, message in (({"source_task": tmp_path / "new" / "inner"}, "apart from"),
                            ({"source_task": tmp_path / "x", "source_cases": 0}, "at least 1")):
        with pytest.raises(UserError, match=message):
            write_cohort(tmp_path / "new", n_cases=2, size=40, n_observers=0, n_observer_cases=0,
                         **kwargs)
        assert not (tmp_path / "new").exists()
    before = (src / "dataset.json").read_text()
    write_cohort(out, n_cases=2, size=40, n_observers=0, n_observer_cases=0, source_task=src,
                 source_cases=3, overwrite=True)
    assert len(list((src / "labelsTr").iterdir())) == 3 and (src / "dataset.json").read_text() != before
