"""The no-learning baseline: muscle HU range inside the body, on hand-made slices."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_xfer.evaluation.measures import MUSCLE_HU
from nnunet_xfer.evaluation.threshold_baseline import (BODY_AIR_HU, body_mask,
                                                       threshold_segmentation)


def slice_with_everything() -> tuple[np.ndarray, np.ndarray]:
    """A 40×40 slice: a fat body with tissue at the range's edges, a gas hole holding a soft-tissue
    island, an arm touching the body, a table and a loose object apart from it; and the mask the
    rule must give."""
    img = np.full((40, 40), -1000.0)
    expected = np.zeros((40, 40), bool)
    img[5:30, 5:30] = -100                  # body: fat
    img[8, 8:12] = [-29, 150, -30, 151]     # the range is inclusive at both ends
    expected[8, 8:10] = True
    img[12:16, 12:16] = 45                  # a muscle block
    expected[12:16, 12:16] = True
    img[20:27, 20:27] = -1000               # gas in the bowel: a hole in the body ...
    img[22:24, 22:24] = 30                  # ... with a loop wall inside it: body (holes filled)
    expected[22:24, 22:24] = True
    img[10:14, 30:34] = 50                  # an arm touching the body: one component with it
    expected[10:14, 30:34] = True
    img[34:36, 2:38] = 100                  # the CT table, apart from the body: not body
    img[2:4, 35:38] = 40                    # a loose object in the air: not body
    img[0, 0] = -499                        # above the air threshold, but a single pixel
    return img, expected


def test_threshold_segmentation_follows_the_rule_exactly():
    img, expected = slice_with_everything()
    got = threshold_segmentation(img)
    assert got.dtype == np.uint8 and got.shape == img.shape
    np.testing.assert_array_equal(got.astype(bool), expected)
    assert MUSCLE_HU == (-29.0, 150.0) and BODY_AIR_HU == -500.0


def test_body_mask_is_the_largest_component_with_holes_filled():
    img, _ = slice_with_everything()
    body = body_mask(img)
    assert body[21, 21] and body[22, 22]           # gas hole filled
    assert body[11, 31]                             # touching arm
    assert not body[35, 10] and not body[3, 36]     # table, loose object
    assert body.sum() == 25 * 25 + 16
    # 4-connectivity: an object touching the body only at a corner is not body
    img2 = img.copy()
    img2[30, 30] = 40
    assert not body_mask(img2)[30, 30]


def test_edge_cases():
    assert not body_mask(np.full((8, 8), -1000.0)).any()
    assert not threshold_segmentation(np.full((8, 8), -1000.0)).any()
    everything = threshold_segmentation(np.full((8, 8), 40.0))
    assert everything.all()
    with pytest.raises(ValueError, match="2D"):
        body_mask(np.zeros((2, 8, 8)))
    # the rule's parameters
    img = np.full((10, 10), -1000.0)
    img[2:8, 2:8] = 0
    assert threshold_segmentation(img, muscle_hu=(10, 20)).sum() == 0
    assert threshold_segmentation(img, air_hu=5).sum() == 0


def test_on_the_phantom_it_counts_confusers_as_muscle():
    """On phantom slices the threshold finds most muscle but also bowel, organs and arms."""
    from nnunet_xfer.phantom import make_subject
    from nnunet_xfer.phantom import structures as st
    s = make_subject(2, size=64)
    seg = threshold_segmentation(s.image).astype(bool)
    ref = s.mask.astype(bool)
    recall = (seg & ref).sum() / ref.sum()
    precision = (seg & ref).sum() / seg.sum()
    assert recall > 0.8 and precision < 0.75
    assert (seg & np.isin(s.tissue, [st.BOWEL_WALL, st.BOWEL_CONTENT])).any()
