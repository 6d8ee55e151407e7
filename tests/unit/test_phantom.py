"""Synthetic L3 cohort: determinism, layout, anatomy sanity, simulated observers, CLI."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import OUTPUT_MARKER
from nnunet_xfer.phantom import (make_subject, observer_mask, observer_name, observer_style,
                                 write_cohort)
from nnunet_xfer.phantom.anatomy import sample_params
from nnunet_xfer.phantom.observers import ObserverStyle, observer_rng
from nnunet_xfer.phantom.subject import subject_rngs


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def subjects_256():
    return [make_subject(i, size=256, seed=3) for i in range(4)]


def test_same_seed_same_bytes_different_seed_differs():
    a, b = make_subject(2, size=96, seed=5), make_subject(2, size=96, seed=5)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert (a.spacing, a.height_m, a.sex) == (b.spacing, b.height_m, b.sex)
    c, d = make_subject(2, size=96, seed=6), make_subject(3, size=96, seed=5)
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.mask, c.mask)
    assert not np.array_equal(a.image, d.image)


def test_same_anatomy_at_every_size():
    small, large = make_subject(1, size=64), make_subject(1, size=256)
    assert small.spacing[0] == pytest.approx(large.spacing[0] * 4)
    assert (small.height_m, small.sex) == (large.height_m, large.sex)
    area = lambda s: s.mask.sum() * s.spacing[0] * s.spacing[1]  # noqa: E731
    assert area(small) == pytest.approx(area(large), rel=0.12)


def test_spacing_rule():
    for i in range(6):
        s = make_subject(i, size=64)
        spacing_512 = s.spacing[0] * 64 / 512
        # 0.6–0.9 mm at 512²; a FOV of up to 500 mm (0.98 mm) with the arms down
        assert 0.6 <= spacing_512 <= (500 / 512 if s.params.arms else 0.9)
        assert s.spacing[0] == s.spacing[1]
        assert s.image.shape == s.mask.shape == (64, 64)


def test_anatomy_sanity(subjects_256):
    muscle_hu = []
    for s in subjects_256:
        assert s.image.dtype == np.int16 and s.mask.dtype == np.uint8
        assert set(np.unique(s.mask)) == {0, 1}
        m = s.mask.astype(bool)
        body = ndimage.binary_fill_holes(s.image > -500)
        body = ndimage.binary_opening(body, iterations=2)
        labels, _ = ndimage.label(body)
        body = labels == np.bincount(labels.ravel()[labels.ravel() > 0]).argmax()  # not the table
        assert not (m & ~body).any()
        frac = m.sum() / body.sum()
        assert 0.1 <= frac <= 0.4, frac  # lean muscular men reach ~0.38 at L3
        area_cm2 = m.sum() * s.spacing[0] * s.spacing[1] / 100
        assert 60 < area_cm2 < 260
        muscle_hu.append(s.image[ndimage.binary_erosion(m)].mean())
        # subcutaneous fat: the outer ring of the body inside the skin
        dist = ndimage.distance_transform_edt(body) * s.spacing[0]
        subcut = (dist > 3) & (dist < 6) & ~m
        assert -150 < np.median(s.image[subcut]) < -50
        # vertebra: cortex and posterior elements above 300 HU
        assert (s.image[body] > 300).sum() * s.spacing[0] ** 2 > 400  # mm², cortex + elements
    assert all(-10 <= h <= 80 for h in muscle_hu), muscle_hu
    assert max(muscle_hu) - min(muscle_hu) > 3  # myosteatosis varies between subjects


def test_cohort_mixes_sexes_heights_and_muscle_density():
    subjects = [sample_params(subject_rngs(0, i)[0]) for i in range(30)]
    assert {s.sex for s in subjects} == {"F", "M"}
    heights = [s.height_m for s in subjects]
    assert 1.45 <= min(heights) and max(heights) <= 2.05 and np.std(heights) > 0.03
    assert np.mean([s.height_m for s in subjects if s.sex == "M"]) > np.mean(
        [s.height_m for s in subjects if s.sex == "F"])
    assert np.ptp([s.myosteatosis for s in subjects]) > 0.3
    assert np.ptp([s.fat_thickness for s in subjects]) > 15  # mm of subcutaneous fat


def test_observers_realistic_and_distinct(subjects_256):
    styles = [observer_style(k, seed=3) for k in range(3)]
    ref_dice, pair_dice = [], []
    for i, s in enumerate(subjects_256):
        obs = [observer_mask(s, st, observer_rng(3, k, i)) for k, st in enumerate(styles)]
        for o in obs:
            assert o.shape == s.mask.shape and o.dtype == np.uint8 and set(np.unique(o)) <= {0, 1}
            assert not np.array_equal(o, s.mask)
            ref_dice.append(dice(o, s.mask))
        for a in range(3):
            for b in range(a + 1, 3):
                assert not np.array_equal(obs[a], obs[b])
                pair_dice.append(dice(obs[a], obs[b]))
    assert 0.9 <= np.mean(ref_dice) <= 0.98, np.mean(ref_dice)
    assert min(ref_dice) > 0.8
    # observers and the reference are alike: experts agree with the reference about as well as
    # with each other (the reference is one of them, not the truth)
    assert abs(np.mean(pair_dice) - np.mean(ref_dice)) < 0.02
    # the same observer on the same case is reproducible
    again = observer_mask(subjects_256[0], styles[0], observer_rng(3, 0, 0))
    assert np.array_equal(again, observer_mask(subjects_256[0], styles[0], observer_rng(3, 0, 0)))


def test_observer_style_direction(subjects_256):
    """Positive offsets outline more muscle than the truth, negative ones less; the fat
    tendency acts where muscle borders fat, not where it borders organs or bowel."""
    base = ObserverStyle(bias_mm=0.0, fat_mm=0.0, noise_mm=0.0, corr_mm=10.0, omissions=0.0,
                         omission_mm=5.0)
    near_soft = {"fat": 0, "bias": 0}
    for s in subjects_256:
        ref = s.truth.astype(bool)
        area = {(field, mm): int(observer_mask(s, replace(base, **{field: mm}),
                                               observer_rng(0, 0, 0)).sum())
                for field in ("bias_mm", "fat_mm") for mm in (-1.0, 1.0)}
        plain = int(observer_mask(s, base, observer_rng(0, 0, 0)).sum())
        assert abs(plain - int(ref.sum())) <= 0.01 * ref.sum()
        assert area[("bias_mm", -1.0)] < plain < area[("bias_mm", 1.0)]
        assert area[("fat_mm", -1.0)] < plain < area[("fat_mm", 1.0)]
        ring = ndimage.binary_dilation(ref) & ~ref
        soft = ring & (s.image > -10) & (s.image < 300)  # bowel, kidney, vessels next to muscle
        for key, style in (("fat", replace(base, fat_mm=1.0)),
                           ("bias", replace(base, bias_mm=1.0))):
            grown = observer_mask(s, style, observer_rng(0, 0, 0)).astype(bool) & ~ref
            near_soft[key] += int((grown & soft).sum())
    assert near_soft["fat"] < near_soft["bias"]


def test_observer_names():
    assert observer_name(0) == "obs01" and observer_name(9) == "obs10"
    assert observer_name(0, 150) == "obs001"


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_write_cohort_layout(tmp_path):
    out = write_cohort(tmp_path / "c", n_cases=5, size=48, n_observers=2, n_observer_cases=3,
                       seed=1)
    with open(out / "cases.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case_id", "image", "mask", "height_m", "sex"]
    assert [r["case_id"] for r in rows] == [f"L3-{i:04d}" for i in range(5)]
    for i, r in enumerate(rows):
        img, arr = _read(out / r["image"])
        msk, marr = _read(out / r["mask"])
        subj = make_subject(i, size=48, seed=1)
        assert img.GetDimension() == 2 and arr.dtype == np.int16
        assert img.GetSpacing() == pytest.approx(subj.spacing[::-1])
        assert msk.GetSpacing() == img.GetSpacing() and msk.GetOrigin() == img.GetOrigin()
        assert marr.dtype == np.uint8
        np.testing.assert_array_equal(arr, subj.image)
        np.testing.assert_array_equal(marr, subj.mask)
        assert float(r["height_m"]) == pytest.approx(subj.height_m, abs=1e-3)
        assert r["sex"] == subj.sex
    assert sorted(p.name for p in (out / "observers").iterdir()) == ["obs01", "obs02"]
    for name in ("obs01", "obs02"):
        files = sorted(p.name for p in (out / "observers" / name).iterdir())
        assert files == [f"L3-{i:04d}.nii.gz" for i in range(3)]
    assert not [p for p in tmp_path.iterdir() if p.name != "c"]  # no temporary folder left
    again = write_cohort(tmp_path / "d", n_cases=5, size=48, n_observers=2, n_observer_cases=3,
                         seed=1)
    # every data file byte-identical; the output marker differs only in its time stamp
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != OUTPUT_MARKER)
    assert files == sorted(p.relative_to(again) for p in again.rglob("*")
                           if p.is_file() and p.name != OUTPUT_MARKER)
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
    listed = json.loads((out / OUTPUT_MARKER).read_text())["files"]
    assert listed == json.loads((again / OUTPUT_MARKER).read_text())["files"] == sorted(
        f.as_posix() for f in files)


def test_write_cohort_refuses_existing_and_overwrites(tmp_path):
    out = tmp_path / "c"
    write_cohort(out, n_cases=2, size=40, n_observers=1, n_observer_cases=1)
    before = (out / "images" / "L3-0000.nii.gz").read_bytes()
    with pytest.raises(UserError, match="exists"):
        write_cohort(out, n_cases=2, size=40, seed=9)
    assert (out / "images" / "L3-0000.nii.gz").read_bytes() == before
    write_cohort(out, n_cases=3, size=40, n_observers=1, n_observer_cases=1, seed=9, overwrite=True)
    assert len(list((out / "images").iterdir())) == 3
    assert (out / "images" / "L3-0000.nii.gz").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_observer_cases_clamped_and_bad_arguments(tmp_path, capsys):
    out = write_cohort(tmp_path / "c", n_cases=2, size=40, n_observers=1, n_observer_cases=5)
    assert "warning: --observer-cases 5 > --cases 2" in capsys.readouterr().err
    assert len(list((out / "observers" / "obs01").iterdir())) == 2
    for kwargs in ({"n_cases": 0}, {"size": 8}, {"n_observers": -1}):
        with pytest.raises(UserError):
            write_cohort(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_cli_phantom(tmp_path):
    out = tmp_path / "cohort"
    run_cli("nnunet-xfer", "phantom", str(out), "--cases", "3", "--size", "40", "--observers", "2",
            "--observer-cases", "2", "--seed", "4")
    assert len(list((out / "images").glob("L3-*.nii.gz"))) == 3
    assert len(list((out / "observers" / "obs02").glob("*.nii.gz"))) == 2
    _, arr = _read(out / "images" / "L3-0001.nii.gz")
    np.testing.assert_array_equal(arr, make_subject(1, size=40, seed=4).image)
    proc = run_cli("nnunet-xfer", "phantom", str(out), "--cases", "3", "--size", "40", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists" in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in proc.stderr


def test_tissue_hu_matches_a_real_l3_slice():
    """Muscle and subcutaneous-fat HU of a real L3 slice lie within the phantom's range when the
    phantom is made at the real slice's pixel size."""
    from conftest import REAL_CT
    folder = REAL_CT / "totalseg_example"
    if not (folder / "example_ct_L3_hu.nii.gz").exists():
        pytest.skip("real CT test files not present")
    img = sitk.ReadImage(str(folder / "example_ct_L3_hu.nii.gz"))
    real = sitk.GetArrayFromImage(img)[0].astype(float)
    mask_file = folder / "example_ct_L3_mask_ts_fast.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file)))[0]
    spacing = img.GetSpacing()[0]

    def stats(image, muscle, px):
        body = ndimage.binary_fill_holes(image > -500)
        lab, _ = ndimage.label(body)
        body = lab == np.bincount(lab.ravel()[lab.ravel() > 0]).argmax()
        depth = ndimage.distance_transform_edt(body) * px
        return image[muscle].mean(), np.median(image[(depth > 3) & (depth < 6)])

    real_muscle, real_fat = stats(real, (labels >= 1) & (labels <= 4), spacing)
    size = int(round(512 * 0.75 / spacing))
    phantom = [stats(s.image.astype(float), s.mask.astype(bool), s.spacing[0])
               for s in (make_subject(i, size=size) for i in range(8))]
    muscle, fat = np.array(phantom).T
    assert muscle.min() - 10 <= real_muscle <= muscle.max() + 10, (real_muscle, muscle)
    assert fat.min() - 15 <= real_fat <= fat.max() + 15, (real_fat, fat)


# ----------------------------------------------------------------------------- what a slice holds
@pytest.fixture(scope="module")
def cohort_params():
    return [sample_params(subject_rngs(0, i)[0]) for i in range(60)]


def test_cohort_mixes_contrast_dose_arms_and_organs(cohort_params):
    from nnunet_xfer.phantom.anatomy import DOSES, PHASES
    ps = cohort_params
    assert {p.phase for p in ps} == set(PHASES)
    assert {p.scan["dose"] for p in ps} == set(DOSES)
    assert 0.15 <= np.mean([bool(p.arms) for p in ps]) <= 0.45
    gaps = [a["gap"] for p in ps for a in p.arms]
    assert min(gaps) < 0 < max(gaps)  # arms pressed against the torso, and apart from it
    for key in ("liver", "spleen", "duodenum", "oral", "calcified"):
        assert 0 < np.mean([p.organs[key] for p in ps]) < 1, key
    assert 0 < np.mean([any(p.organs["crus"]) for p in ps]) < 1
    assert 0 < np.mean([p.scan["streaks"] for p in ps]) < 0.5


def _first(params, test) -> int:
    return next(i for i, p in enumerate(params) if test(p))


def test_structures_next_to_the_muscle_and_their_hu(cohort_params):
    """Unenhanced organs, vessels, bowel wall, crura and arms have muscle's HU (noise-free);
    arms and crura are never L3 muscle, in the truth or in the reference."""
    from nnunet_xfer.evaluation.measures import MUSCLE_HU
    from nnunet_xfer.phantom import structures as st
    plain = _first(cohort_params, lambda p: p.phase == "none" and p.arms and p.organs["liver"]
                   and any(p.organs["crus"]) and any(p.organs["kidney"]))
    portal = _first(cohort_params, lambda p: p.phase == "portal")
    lo, hi = MUSCLE_HU
    for i in (plain, portal):
        s = make_subject(i, size=128)
        t, hu = s.fine.tissue, s.fine.hu
        present = set(np.unique(t).tolist())
        assert {st.BOWEL_WALL, st.BOWEL_CONTENT, st.ARTERY, st.VEIN, st.INTERMUSCULAR_FAT,
                st.VISCERAL_FAT, st.SUBCUT_FAT, st.BONE, st.MUSCLE} <= present
        assert lo <= np.median(hu[t == st.BOWEL_WALL]) <= hi
        assert not (s.fine.muscle & np.isin(t, [st.ARM_MUSCLE, st.CRUS])).any()
        assert not (s.mask.astype(bool) & np.isin(s.tissue, [st.ARM_MUSCLE, st.ARM_FAT])).any()
        assert not (s.truth.astype(bool) & (s.tissue == st.ARM_MUSCLE)).any()
        if i == plain:
            assert {st.ARM_MUSCLE, st.ARM_BONE, st.LIVER, st.CRUS, st.KIDNEY} <= present
            for organ in (st.KIDNEY, st.LIVER, st.ARTERY, st.VEIN, st.CRUS, st.ARM_MUSCLE):
                assert lo <= np.median(hu[t == organ]) <= hi, organ
            muscle_hu = s.params.hu["muscle"]
            assert abs(np.median(hu[t == st.ARM_MUSCLE]) - muscle_hu) < 20
        else:  # portal-venous: the aorta is brighter than muscle's range
            assert np.median(hu[t == st.ARTERY]) > hi


def test_reference_is_one_expert_and_observers_are_independent(subjects_256):
    """The reference is an expert's outline of the truth (not the truth); observers are other
    experts: their errors against the truth are not the reference's."""
    overlaps = []
    for i, s in enumerate(subjects_256):
        truth, ref = s.truth.astype(bool), s.mask.astype(bool)
        assert not np.array_equal(truth, ref) and 0.92 < dice(truth, ref) < 0.995
        ref_err = ref ^ truth
        for k in range(3):
            obs = observer_mask(s, observer_style(k, seed=3), observer_rng(3, k, i)).astype(bool)
            obs_err = obs ^ truth
            overlaps.append((ref_err & obs_err).sum() / max((ref_err | obs_err).sum(), 1))
            # a noisy copy of the reference would differ from it less than from the truth
            assert (obs ^ ref).sum() > 0.5 * obs_err.sum()
    assert np.mean(overlaps) < 0.25, overlaps


def test_noise_is_correlated_and_follows_the_dose(cohort_params):
    from dataclasses import replace as dc_replace

    from nnunet_xfer.phantom import scanner
    from nnunet_xfer.phantom.anatomy import DOSES
    p = cohort_params[0]
    s512 = p.fov_mm / 512
    assert scanner.noise_sd(p, s512) == pytest.approx(p.scan["noise_sd"])
    assert scanner.noise_sd(p, 8 * s512) < scanner.noise_sd(p, 4 * s512) < scanner.noise_sd(p, s512)
    assert DOSES["high"] < DOSES["standard"] < DOSES["low"]
    field = scanner.noise(np.random.default_rng(0), 256, s512, p)
    assert field.std() == pytest.approx(p.scan["noise_sd"], rel=1e-6)
    # noise power spectrum: peaks at mid frequencies (not white, not a low-pass blob)
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256, s512), np.fft.fftfreq(256, s512)))
    bins = np.linspace(0, f.max(), 30)
    radial = np.array([power[(f >= a) & (f < b)].mean() for a, b in zip(bins[:-1], bins[1:])])
    peak = bins[np.argmax(radial)]
    assert 0.1 < peak < 0.45, peak
    assert radial[0] < 0.3 * radial.max() and radial[-1] < 0.3 * radial.max()
    louder = dc_replace(p, scan={**p.scan, "noise_sd": 2 * p.scan["noise_sd"]})
    assert scanner.noise_sd(louder, s512) == pytest.approx(2 * scanner.noise_sd(p, s512))


def test_streaks_and_beam_hardening(cohort_params):
    from nnunet_xfer.phantom import scanner
    from nnunet_xfer.phantom.shapes import Grid
    with_arms = _first(cohort_params, lambda p: p.scan["streaks"] and p.arms)
    without = _first(cohort_params, lambda p: not p.scan["streaks"])
    for i, expect in ((with_arms, True), (without, False)):
        s = make_subject(i, size=64)
        grid = Grid(s.fine.hu.shape[0], s.spacing[0] / s.factor)
        field = scanner.artefacts(s.params, grid, s.fine)
        if expect:
            assert field.max() > 20 and field.min() < -20  # bright and dark streaks
        else:  # only cupping: a few HU darker in the middle
            assert field.max() <= 0 and field.min() >= -s.params.scan["cupping_hu"] - 1e-9


def test_label_map_downsampling_takes_the_majority():
    from nnunet_xfer.phantom.structures import majority
    labels = np.array([[1, 1, 2, 3], [1, 2, 3, 3], [0, 0, 5, 5], [0, 4, 4, 6]], np.uint8)
    np.testing.assert_array_equal(majority(labels, 2), [[1, 3], [0, 5]])
    np.testing.assert_array_equal(majority(labels[:2, :2], 2), [[1]])
    np.testing.assert_array_equal(majority(np.array([[2, 1], [1, 2]], np.uint8), 2), [[1]])  # tie
    s = make_subject(0, size=48)
    assert s.tissue.shape == s.image.shape and s.tissue.dtype == np.uint8
