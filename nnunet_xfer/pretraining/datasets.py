"""Where pretraining batches come from: CT slices (jigsaw/rec) and natural images (seg/cls).

Every source is an endless stream of fixed-size examples for a ``torch.utils.data.DataLoader``:
``{"image": (C, H, W) float32}`` plus ``"mask"`` (H, W, int64; 255 = ignore) for segmentation or
``"label"`` (int) for classification. Each source also says what it read: ``description`` (the path)
and ``ids`` (the case / image ids used), recorded in the store entry.

CT slices come normalised exactly as nnU-Net normalises them: nnU-Net's preprocessed cases (image
arrays only; the label arrays are never opened) or other CT images normalised with the plans'
normalisation scheme and the dataset's intensity properties. Natural images are converted to the
network's input channels, randomly resized-cropped to the patch size and z-scored.

CT images are read by :func:`nnunet_xfer.imaging.read_image` and used in canonical orientation,
as ``convert`` writes the target's slices. Whether ``--data`` is the target is decided by content
before any source is built (:mod:`nnunet_xfer.pretraining.identity`).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import picture_size, read_picture
from nnunet_xfer.imaging.names import (CT_ENDINGS, PNG_ENDING, VOC_IMAGE_ENDINGS, VOC_MASK_ENDING,
                                       has_ending, strip_ending)
from nnunet_xfer.layout import DATASET_JSON, image_file, label_file, preprocessed_image
from nnunet_xfer.sources import (DATA_KIND_KEY, DATA_KIND_MEDICAL, DATA_KIND_NATURAL, DATA_KINDS,
                                  DATA_NATURAL_CLASSES, DATA_NATURAL_SEGMENTATION)

IGNORE = 255
#: RandomResizedCrop area range for natural images (torchvision's classification default).
CROP_SCALE = (0.08, 1.0)
SEG_CROP_SCALE = (0.25, 1.0)


class Source(IterableDataset):
    """An endless, seeded stream of examples; subclasses implement :meth:`sample`."""

    description: str = ""
    ids: list[str] = []

    def sample(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def __iter__(self):
        # DataLoader seeds torch differently in every worker; derive numpy's stream from it.
        rng = np.random.default_rng(torch.initial_seed() % 2 ** 63)
        while True:
            yield self.sample(rng)


def crop_or_pad(arr: np.ndarray, patch: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random ``patch``-sized window of a (C, H, W) array, zero-padded (as nnU-Net) where smaller."""
    c, h, w = arr.shape
    ph, pw = patch
    out = np.zeros((c, ph, pw), dtype=np.float32)
    y = int(rng.integers(0, h - ph + 1)) if h >= ph else 0
    x = int(rng.integers(0, w - pw + 1)) if w >= pw else 0
    src = arr[:, y:y + ph, x:x + pw]
    oy, ox = max(0, (ph - h) // 2), max(0, (pw - w) // 2)
    out[:, oy:oy + src.shape[1], ox:ox + src.shape[2]] = src
    return out


def _check_size(shape: tuple[int, ...], min_side: int, what: str) -> None:
    if min(shape) < min_side:
        raise UserError(f"{what} is {'×'.join(map(str, shape))} px, smaller than a jigsaw tile of "
                        f"the planned patch ({min_side} px); remove it or use larger images")


class PreprocessedSlices(Source):
    """2D slices of nnU-Net's preprocessed cases of the target dataset (image arrays only).

    ``case_ids`` restricts it to those cases (one fold's training cases): no other case's file
    is ever opened.
    """

    def __init__(self, folder: Path, patch: tuple[int, int], min_side: int, dataset_name: str,
                 case_ids: list[str] | None = None):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        did = dataset_name[len("Dataset"):].split("_", 1)[0]
        if not folder.is_dir() or not any(folder.iterdir()):
            raise UserError(f"{folder} has no preprocessed cases; run "
                            f"`nnUNetv2_plan_and_preprocess -d {did} -c 2d` first")
        try:
            self.dataset_class = infer_dataset_class(str(folder))
        except (AssertionError, KeyError) as e:
            raise UserError(f"cannot tell nnU-Net's dataset format in {folder} ({e}); "
                            f"re-run `nnUNetv2_plan_and_preprocess -d {did}`") from None
        self.folder = folder
        self.patch = patch
        present = sorted(self.dataset_class.get_identifiers(str(folder)))
        if case_ids is None:
            self.ids = present
        else:
            missing = sorted(set(map(str, case_ids)) - set(present))
            if missing:
                raise UserError(f"{folder} has no preprocessed array of case(s) "
                                f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; re-run "
                                f"`nnUNetv2_plan_and_preprocess -d {did} -c 2d`")
            self.ids = sorted(map(str, case_ids))
        if not self.ids:
            raise UserError(f"no cases to pretrain on in {folder}")
        self.description = f"nnUNet_preprocessed/{dataset_name}/{folder.name}"
        self._open: dict = {}
        for case in self.ids:
            _check_size(tuple(self._data(case).shape[-2:]), min_side, f"case {case} in {folder}")

    def _data(self, case: str):
        """The case's image array (C, Z, Y, X), opened lazily like nnU-Net's dataset does."""
        if case not in self._open:
            from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
            if self.dataset_class is nnUNetDatasetBlosc2:
                import blosc2
                blosc2.set_nthreads(1)
                arr = blosc2.open(urlpath=str(preprocessed_image(self.folder, case, "blosc2")),
                                  mode="r", dparams={"nthreads": 1}, mmap_mode="r")
            else:
                npy = preprocessed_image(self.folder, case, "npy")
                arr = (np.load(npy, mmap_mode="r") if npy.is_file()
                       else np.load(preprocessed_image(self.folder, case, "npz"))["data"])
            self._open[case] = arr
        return self._open[case]

    def sample(self, rng: np.random.Generator) -> dict:
        data = self._data(self.ids[int(rng.integers(len(self.ids)))])
        z = int(rng.integers(data.shape[1]))
        sl = np.asarray(data[:, z], dtype=np.float32)
        return {"image": torch.from_numpy(crop_or_pad(sl, self.patch, rng))}

    def __getstate__(self):  # blosc2 handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def _files(root: Path, endings: tuple[str, ...]) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and has_ending(p, endings))


def _normaliser(scheme: str, props: dict):
    """nnU-Net's normalisation class of a plans' scheme name (as its DefaultPreprocessor finds it)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    cls = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "preprocessing" / "normalization"),
                                      scheme, "nnunetv2.preprocessing.normalization")
    return cls(use_mask_for_norm=False, intensityproperties=props)


class CTPreparation(NamedTuple):
    """How the target's network sees CT: the configuration's in-plane spacing (y, x) in mm, the
    plans' normalisation scheme and the dataset's intensity properties (of channel 0)."""

    spacing: tuple[float, float]
    scheme: str
    props: dict

    def resample(self, arr: np.ndarray, spacing, order: int = 1) -> np.ndarray:
        """(Z, Y, X) ``arr`` with in-plane ``spacing`` (y, x) resampled to :attr:`spacing`."""
        from scipy.ndimage import zoom
        factors = (1.0, spacing[0] / self.spacing[0], spacing[1] / self.spacing[1])
        if np.allclose(factors, 1.0, atol=1e-3):
            return arr
        return zoom(arr, factors, order=order)


class CTImages(Source):
    """Other unlabelled CT images (NIfTI/MHA/NRRD, 2D or 3D; axial slices), nnU-Net-normalised.

    Read by the image reader (HU required) in canonical orientation. Slices are resampled in-plane
    to the configuration's spacing and normalised with the plans' scheme (``CTNormalization``: clip to the dataset's 0.5–99.5 percentiles, subtract its mean,
    divide by its std). All slices are held in memory as float32.
    """

    def __init__(self, root: Path, patch: tuple[int, int], min_side: int,
                 spacing: tuple[float, float], scheme: str, props: dict):
        from nnunet_xfer.imaging import read_image
        ct = CTPreparation(tuple(spacing), scheme, props)
        if not root.exists():
            raise UserError(f"--data {root} does not exist")
        files = _files(root, CT_ENDINGS)
        if not files:
            raise UserError(f"--data {root} holds no CT images ({', '.join(CT_ENDINGS)})")
        norm = _normaliser(ct.scheme, ct.props)
        self.patch, self.volumes, self.ids = patch, [], []
        for f in files:
            image, _ = read_image(f, what="CT image").canonical()
            arr = image.array.astype(np.float32)
            sp = image.spacing[::-1][-2:]  # (row, col) spacing of the array's last two axes
            arr = ct.resample(arr[None] if arr.ndim == 2 else arr, sp)
            _check_size(arr.shape[-2:], min_side, f"CT image {f}")
            self.volumes.append(norm.run(arr))
            self.ids.append(str(f.relative_to(root)) if root.is_dir() else f.name)
        self.description = str(root)

    def sample(self, rng: np.random.Generator) -> dict:
        vol = self.volumes[int(rng.integers(len(self.volumes)))]
        sl = vol[int(rng.integers(vol.shape[0]))][None]
        return {"image": torch.from_numpy(crop_or_pad(sl, self.patch, rng))}


def _to_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """(c, H, W) → (channels, H, W): luminance for one channel, RGB for three, else repeats."""
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 3:
        lum = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    else:
        lum = img.mean(0, keepdim=True)
    return lum.expand(channels, -1, -1).clone()


def _zscore(img: torch.Tensor) -> torch.Tensor:
    return (img - img.mean()) / img.std().clamp_min(1e-6)


def _pil_to_tensor(im, channels: int) -> torch.Tensor:
    from torchvision.transforms.v2.functional import pil_to_tensor
    im = im.convert("RGB" if channels == 3 else "L")
    return _to_channels(pil_to_tensor(im).float() / 255.0, channels)


def _check_pil_size(path: Path, min_side: int) -> None:
    _check_size(picture_size(path), min_side, f"image {path}")


class NaturalSegmentation(Source):
    """Segmentation pairs: a Pascal-VOC folder or a 2D nnU-Net raw dataset folder.

    Natural images (VOC, or an nnU-Net raw dataset whose channel is not CT) are randomly
    resized-cropped, flipped and z-scored per image. A CT nnU-Net raw dataset (channel 0 named
    ``CT``, such as ``nnunet-xfer phantom --source-task``) given a :class:`CTPreparation` is
    prepared like the target's own slices instead: resampled in-plane to the configuration's
    spacing (labels nearest-neighbour), normalised with the plans' scheme and the target's
    intensity properties, held in memory, and sampled as random patches of the planned size
    (zero-padded where smaller, the padding ignored by the loss) mirrored along either axis.

    ``data_kind`` (``sources.DATA_KINDS``) and ``data_label`` say what the images are, for the
    store record: a dataset.json may declare its kind in ``nnunet_xfer.data_kind``.
    """

    def __init__(self, root: Path, patch: tuple[int, int], min_side: int, channels: int,
                 ct: CTPreparation | None = None):
        if not root.is_dir():
            raise UserError(f"--data {root} is not a folder (expected a VOC folder with "
                            f"JPEGImages/ and SegmentationClass/, or an nnU-Net raw dataset)")
        self.patch, self.channels, self.description = patch, channels, str(root)
        self.classes: list[str] | None = None
        self.is_ct, self.data_kind, self._ct = False, DATA_KIND_NATURAL, None
        if (root / DATASET_JSON).is_file():
            self._init_nnunet_raw(root)
        else:
            self._init_voc(root)
        if not self.pairs:
            raise UserError(f"--data {root}: no image/mask pairs found")
        if self.reader is None:
            for img, _ in self.pairs:
                _check_pil_size(img, min_side)
        if self.num_classes < 2:
            raise UserError(f"--data {root}: masks hold a single class; segmentation pretraining "
                            f"needs at least background and one object class")
        self.data_label = f"{DATA_KINDS[self.data_kind]}: {root}"
        if self.is_ct and ct is not None:
            self._ct = [self._prepare_ct(i, ct) for i in range(len(self.pairs))]

    def _init_voc(self, root: Path) -> None:
        images, masks = root / "JPEGImages", root / "SegmentationClass"
        if not images.is_dir():
            raise UserError(f"--data {root}: no JPEGImages/ folder (expected Pascal-VOC layout)")
        if not masks.is_dir() or not any(masks.glob(f"*{VOC_MASK_ENDING}")):
            raise UserError(f"--data {root}: no masks in SegmentationClass/ (palette PNGs); "
                            f"a VOC folder without masks cannot be used for seg pretraining")
        split = root / "ImageSets" / "Segmentation" / "train.txt"
        if split.is_file():
            names = [n.strip() for n in split.read_text().split() if n.strip()]
        else:
            names = sorted(p.stem for p in masks.glob(f"*{VOC_MASK_ENDING}"))
        self.pairs, self.ids, labels = [], [], set()
        for n in names:
            img = next((images / (n + s) for s in VOC_IMAGE_ENDINGS
                        if (images / (n + s)).is_file()), None)
            mask = masks / f"{n}{VOC_MASK_ENDING}"
            if img is None or not mask.is_file():
                raise UserError(f"--data {root}: image or mask of {n!r} missing "
                                f"(JPEGImages/{n}{VOC_IMAGE_ENDINGS[0]}, "
                                f"SegmentationClass/{n}{VOC_MASK_ENDING})")
            labels.update(np.unique(np.asarray(read_picture(mask))).tolist())
            self.pairs.append((img, mask))
            self.ids.append(n)
        labels.discard(IGNORE)
        self.num_classes = int(max(labels)) + 1 if labels else 0
        self.reader = None

    def _init_nnunet_raw(self, root: Path) -> None:
        import json
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        try:
            ds = json.loads((root / DATASET_JSON).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"--data {root}: dataset.json is not valid JSON ({type(e).__name__}); "
                            f"fix it or use a Pascal-VOC folder") from None
        if not isinstance(ds, dict) or not isinstance(ds.get("labels", {}), dict):
            raise UserError(f"--data {root}: dataset.json is not an nnU-Net dataset.json "
                            f"(an object with labels)")
        ending = ds.get("file_ending", PNG_ENDING)
        channel_names = ds.get("channel_names", ds.get("modality", {"0": ""}))
        n_ch = len(channel_names)
        labels = {k: v for k, v in ds.get("labels", {}).items()}
        self.ignore = labels.pop("ignore", None)
        values = [v for v in labels.values() if isinstance(v, int)]
        self.num_classes = max(values) + 1 if values else 0
        self.classes = [k for k, v in sorted(labels.items(), key=lambda kv: str(kv[1]))
                        if isinstance(v, int)]
        self.is_ct = n_ch == 1 and str(next(iter(channel_names.values()), "")).lower() == "ct"
        declared = ds.get("nnunet_xfer", {})
        declared = declared.get(DATA_KIND_KEY) if isinstance(declared, dict) else None
        self.data_kind = (declared if declared in DATA_KINDS
                          else DATA_KIND_MEDICAL if self.is_ct else DATA_KIND_NATURAL)
        self.pairs, self.ids = [], []
        for lab in sorted((root / "labelsTr").glob(label_file("*", ending))):
            case = strip_ending(lab, (ending,))
            imgs = [root / "imagesTr" / image_file(case, c, ending) for c in range(n_ch)]
            if not all(i.is_file() for i in imgs):
                raise UserError(f"--data {root}: images of case {case} missing in imagesTr/")
            self.pairs.append((imgs, lab))
            self.ids.append(case)
        example = str(self.pairs[0][1]) if self.pairs else None
        self.reader = determine_reader_writer_from_dataset_json(ds, example, verbose=False)

    def _prepare_ct(self, i: int, ct: CTPreparation) -> tuple[np.ndarray, np.ndarray]:
        """Case ``i`` as the target's network sees CT: (1, H, W) float32 and (H, W) int64.

        Read by the image reader (a truncated file, a bad spacing, NaN voxels and non-HU values
        refused; the label map on the image's grid) in canonical orientation, like the target."""
        from nnunet_xfer.imaging import check_pair, read_image, read_mask
        img, mask = self.pairs[i]
        case = self.ids[i]
        ct_image = read_image(img[0], case, what="CT image")
        label_map = read_mask(mask, case, what="label map")
        check_pair(ct_image, label_map, case, "label map")
        ct_image, turn = ct_image.canonical()
        data, seg = ct_image.array, turn.apply(label_map.array)
        data, seg = (a[None] if a.ndim == 2 else a for a in (data, seg))  # (Z, Y, X)
        if seg.shape != data.shape:
            raise UserError(f"case {case}: label map {mask} is {seg.shape}, its CT image is "
                            f"{data.shape} (slices, rows, columns); they must match")
        spacing = ct_image.spacing[::-1][-2:]  # (row, col) of the array's last two axes
        image = _normaliser(ct.scheme, ct.props).run(ct.resample(data.astype(np.float32), spacing))
        labels = ct.resample(seg, spacing, order=0).astype(np.int64)
        if self.ignore is not None:
            labels[labels == self.ignore] = IGNORE
        z = len(image) // 2  # a 2D dataset has one slice; a 3D one gives its middle slice
        return image[z][None].astype(np.float32), labels[z]

    def _sample_ct(self, rng: np.random.Generator) -> dict:
        image, labels = self._ct[int(rng.integers(len(self._ct)))]
        # crop image and labels together; labels shifted by one so that padding reads -1
        both = crop_or_pad(np.concatenate([image, labels[None] + 1.0]), self.patch, rng)
        x, m = both[:1], both[1].astype(np.int64) - 1
        m[m < 0] = IGNORE
        for axis in (1, 2):  # nnU-Net mirrors along every spatial axis
            if rng.random() < 0.5:
                x, m = np.flip(x, axis), np.flip(m, axis - 1)
        x = _to_channels(torch.from_numpy(np.ascontiguousarray(x)), self.channels)
        return {"image": x, "mask": torch.from_numpy(np.ascontiguousarray(m))}

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.pairs[i]
        if self.reader is None:
            image = read_picture(img)
            m = torch.from_numpy(np.asarray(read_picture(mask)).astype(np.int64))
            x = _pil_to_tensor(image, self.channels)
        else:
            rw = self.reader()
            data, _ = rw.read_images([str(p) for p in img])
            seg, _ = rw.read_seg(str(mask))
            x = _to_channels(torch.from_numpy(np.asarray(data[:, 0], dtype=np.float32)), self.channels)
            m = torch.from_numpy(np.asarray(seg[0, 0]).astype(np.int64))
            if self.ignore is not None:
                m[m == self.ignore] = IGNORE
        if tuple(m.shape) != tuple(x.shape[-2:]):
            raise UserError(f"mask of {self.ids[i]!r} is {tuple(m.shape)}, image is "
                            f"{tuple(x.shape[-2:])}; they must match")
        return x, m

    def sample(self, rng: np.random.Generator) -> dict:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
        if self._ct is not None:
            return self._sample_ct(rng)
        x, m = self._load(int(rng.integers(len(self.pairs))))
        tf = v2.Compose([v2.RandomResizedCrop(self.patch, scale=SEG_CROP_SCALE, antialias=True),
                         v2.RandomHorizontalFlip()])
        x, m = tf(tv_tensors.Image(x), tv_tensors.Mask(m))
        return {"image": _zscore(x.as_subclass(torch.Tensor)),
                "mask": m.as_subclass(torch.Tensor).long()}


class ImageClasses(Source):
    """An ImageFolder-style root: one sub-folder per class (torchvision's ImageFolder rules)."""

    def __init__(self, root: Path, patch: tuple[int, int], min_side: int, channels: int):
        from torchvision.datasets import ImageFolder
        if not root.is_dir():
            raise UserError(f"--data {root} is not a folder (expected one sub-folder per class)")
        try:
            folder = ImageFolder(str(root), loader=lambda p: p)
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"--data {root}: no class sub-folders with images "
                            f"({str(e).splitlines()[0]})") from None
        if len(folder.classes) < 2:
            raise UserError(f"--data {root}: found only class {folder.classes!r}; classification "
                            f"pretraining needs at least two class sub-folders")
        self.samples = [(Path(p), int(c)) for p, c in folder.samples]
        self.classes = list(folder.classes)
        self.num_classes = len(self.classes)
        for p, _ in self.samples:
            _check_pil_size(p, min_side)
        self.patch, self.channels, self.description = patch, channels, str(root)
        self.ids = [str(p.relative_to(root)) for p, _ in self.samples]

    def sample(self, rng: np.random.Generator) -> dict:
        from torchvision.transforms import v2
        path, label = self.samples[int(rng.integers(len(self.samples)))]
        x = _pil_to_tensor(read_picture(path), self.channels)
        tf = v2.Compose([v2.RandomResizedCrop(self.patch, scale=CROP_SCALE, antialias=True),
                         v2.RandomHorizontalFlip()])
        return {"image": _zscore(tf(x)), "label": label}


#: The data class of each natural-image kind of ``SourceSpec.data`` (``--data`` folders).
NATURAL_DATA = {DATA_NATURAL_SEGMENTATION: NaturalSegmentation, DATA_NATURAL_CLASSES: ImageClasses}


# ----------------------------------------------------------------------------- not the target
def refuse_target_data(data: Path, dataset_name: str) -> None:
    """Refuse ``--data`` that names the target dataset, in one line, before anything is read.

    The target is recognised here by its folders (raw, preprocessed, results, or inside one of
    them), by its name or id given as ``--data``, and by a folder named like it; by content (the
    voxels of any image, whatever its type or format) in
    :func:`nnunet_xfer.pretraining.identity.refuse_target_content`.
    """
    import os

    from nnunet_xfer import settings
    from nnunet_xfer.layout import DatasetLayout

    layout = DatasetLayout(dataset_name)
    text = str(data)
    what = None
    if not Path(data).exists() and text.strip() in (dataset_name, str(layout.id),
                                                     dataset_name.split("_", 1)[-1]):
        what = "its name"
    real = Path(os.path.realpath(data)) if Path(data).exists() else None
    if what is None and real is not None:
        for var in settings.NNUNET_FOLDERS:
            root = settings.nnunet_folder_or_none(var)
            if root is None:
                continue
            folder = Path(os.path.realpath(root / dataset_name))
            if real == folder or folder in real.parents or real in folder.parents:
                what = f"its {var.removeprefix('nnUNet_')} folder {folder}"
                break
        if what is None and real.name == dataset_name:
            what = f"a folder named {dataset_name}"
    if what is not None:
        raise UserError(f"--data {data} is the target dataset {dataset_name} ({what}); a source "
                        f"task must not learn from the target's own images or labels: choose "
                        f"another dataset")
