"""What lies next to the L3 muscles inside the abdomen: kidneys' lower poles, the liver and
spleen tips, aorta and IVC, the diaphragmatic crura, and bowel packed into the peritoneal cavity
(small-bowel loops that are collapsed, fluid-filled, gas-filled or hold oral contrast; ascending,
descending and transverse colon with stool and gas; mesenteric vessels).

Most of these have muscle's HU in some contrast phase, which is what makes an HU threshold fail
on real L3 slices. Positions and sizes are drawn in millimetres, so a subject's viscera are the
same at every image size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nnunet_xfer.phantom import structures as st
from nnunet_xfer.phantom.canvas import Canvas, Landmarks, grow
from nnunet_xfer.phantom.shapes import Grid, blob, blob_ratio, harmonics, smooth_noise

if TYPE_CHECKING:
    from nnunet_xfer.phantom.anatomy import Params

#: Loop kinds and their share of a subject's small bowel (Dirichlet concentration).
LOOP_KINDS = ("collapsed", "fluid", "gas", "stool")
_LOOP_MIX = (4.0, 3.0, 1.0, 1.0)
#: Candidate positions drawn per subject (far more than ever fit).
_CANDIDATES = 700


def sample(rng: np.random.Generator, p: Params) -> dict:
    """Draw the organs, vessels and bowel of subject ``p`` (its habitus is already drawn)."""
    adip = p.adiposity
    return {
        "kidney": [bool(rng.random() < 0.85), bool(rng.random() < 0.85)],
        "kidney_ab": [(rng.uniform(16, 28), rng.uniform(12, 19)) for _ in range(2)],
        "kidney_dx": rng.uniform(12, 30), "kidney_angle": rng.uniform(0.3, 0.7),
        "organ_gap": rng.uniform(0.5, 3.0),   # fat between an organ and the muscle it abuts (mm)
        "organ_coeffs": [harmonics(rng, 0.06, 4) for _ in range(4)],
        "aorta_r": rng.uniform(8, 12.5), "ivc": (rng.uniform(10, 16), rng.uniform(6, 10)),
        "calcified": bool(rng.random() < 0.3 + 0.4 * p.myosteatosis),
        "scarpa": bool(rng.random() < 0.6),
        # the tip of the right liver lobe and of the spleen reach L3 in some subjects
        "liver": bool(rng.random() < 0.45), "liver_ab": (rng.uniform(28, 55), rng.uniform(16, 32)),
        "spleen": bool(rng.random() < 0.15),
        "spleen_ab": (rng.uniform(15, 35), rng.uniform(10, 22)),
        # the right crus reaches L3 more often than the left
        "crus": [bool(rng.random() < 0.6), bool(rng.random() < 0.3)],
        "crus_ab": (rng.uniform(8, 14), rng.uniform(2.0, 3.8)),
        # share of the peritoneal cavity filled by bowel: lean abdomens are full of loops
        "bowel_fill": float(np.clip(rng.normal(0.84 - 0.35 * adip, 0.08), 0.35, 0.95)),
        "bowel_mix": rng.dirichlet(_LOOP_MIX),
        "bowel_seed": int(rng.integers(2**31)),
        "oral": bool(rng.random() < 0.35),
        "colon_gas": [rng.uniform(0.1, 0.7) for _ in range(3)],
        "transverse_colon": bool(rng.random() < 0.3),
        # the third part of the duodenum crosses in front of the IVC and aorta at about L3
        "duodenum": bool(rng.random() < 0.6),
        "duodenum_ab": (rng.uniform(30, 50), rng.uniform(6, 11)), "duodenum_dy": rng.uniform(2, 10),
    }


def draw(cv: Canvas, grid: Grid, p: Params, lm: Landmarks, cavity: np.ndarray,
         peritoneal: np.ndarray, texture_rng: np.random.Generator) -> None:
    """Paint organs, crura, vessels and bowel; ``cavity`` is where bowel may lie, ``peritoneal``
    everything inside the muscle wall."""
    o, h = p.organs, p.hu
    near = grow(cv.where(st.MUSCLE), grid, o["organ_gap"])
    oc = o["organ_coeffs"]
    for i, sgn in enumerate((-1, 1)):
        if o["kidney"][i]:  # lower poles, lateral to psoas and in front of quadratus lumborum
            ka, kb = o["kidney_ab"][i]
            box, ratio = blob_ratio(grid, lm.vx + sgn * (lm.ps_x + lm.psoas_a + 0.6 * ka
                                                         + o["kidney_dx"] / 3),
                                    lm.vy - 4, ka, kb, angle=-sgn * o["kidney_angle"], coeffs=oc[i])
            m = (ratio < 1) & ~near[box]
            cv.paint(m, h["kidney"], st.KIDNEY, box)
            cv.paint(m & (ratio < 0.62), h["kidney_medulla"], st.KIDNEY, box)
    if o["liver"]:
        box, m = blob(grid, p.body_dx - 0.5 * p.half_width, lm.vy - 0.4 * o["liver_ab"][0],
                      *o["liver_ab"], angle=0.6, coeffs=oc[2])
        cv.paint(m & peritoneal[box] & ~near[box], h["liver"], st.LIVER, box)
    if o["spleen"]:
        box, m = blob(grid, p.body_dx + 0.52 * p.half_width, lm.vy - 0.2 * o["spleen_ab"][0],
                      *o["spleen_ab"], angle=-0.7, coeffs=oc[3])
        cv.paint(m & peritoneal[box] & ~near[box], h["spleen"], st.SPLEEN, box)
    a, b = o["crus_ab"]
    for i, sgn in enumerate((-1, 1)):  # on the anterolateral surface of the vertebral body
        if o["crus"][i]:
            box, m = blob(grid, lm.vx + sgn * (0.375 * lm.vw + 2), lm.vy - 0.375 * lm.vd - 2,
                          a, b, angle=sgn * np.pi / 4)
            cv.paint(m, h["muscle"], st.CRUS, box)
    aorta_c = (lm.vx + 0.25 * lm.vw + 2, lm.vy - lm.vd / 2 - o["aorta_r"] - 2)
    box, m = blob(grid, *aorta_c, o["aorta_r"], o["aorta_r"])
    cv.paint(m, h["blood_a"], st.ARTERY, box)
    if o["calcified"]:
        r = o["aorta_r"]
        box, m = blob(grid, aorta_c[0] + 0.7 * r, aorta_c[1] + 0.5 * r, 1.5, 1.2)
        cv.paint(m, 600, st.ARTERY, box)
    ivc_y = lm.vy - lm.vd / 2 - o["ivc"][1] - 2
    box, m = blob(grid, lm.vx - 0.45 * lm.vw - 4, ivc_y, *o["ivc"], angle=0.2)
    cv.paint(m, h["blood_v"], st.VEIN, box)
    if o["duodenum"]:  # collapsed or fluid-filled, its wall against the great vessels
        a, b = o["duodenum_ab"]
        y = min(ivc_y - o["ivc"][1], aorta_c[1] - o["aorta_r"]) - b - o["duodenum_dy"]
        box, ratio = blob_ratio(grid, lm.vx - 0.2 * a, y, a, b, angle=-0.1)
        m = (ratio < 1) & peritoneal[box] & ~cv.where(st.ARTERY, st.VEIN, st.MUSCLE, box=box)
        cv.paint(m, h["bowel_wall"], st.BOWEL_WALL, box)
        cv.paint(m & (ratio < 0.5), h["fluid"], st.BOWEL_CONTENT, box)

    solid = cv.where(st.MUSCLE, st.INTERMUSCULAR_FAT, st.KIDNEY, st.LIVER, st.SPLEEN, st.ARTERY,
                     st.VEIN, st.CRUS)
    box, m = blob(grid, lm.vx, lm.vy, lm.vw / 2 + 2, lm.vd / 2 + 2)
    solid[box] |= m  # the vertebral body is painted last
    _bowel(cv, grid, p, cavity & ~grow(solid, grid, 3.0), texture_rng)


def _bowel(cv: Canvas, grid: Grid, p: Params, allowed: np.ndarray,
           texture_rng: np.random.Generator) -> None:
    """Colon against the flanks (and in front in some subjects), then small-bowel loops packed
    into ``allowed`` until they cover the subject's share of it, mesenteric vessels between.

    Every random number is drawn up front for all candidates, so which loops exist does not
    depend on the grid (only whether a candidate's centre falls inside ``allowed``).
    """
    o, h = p.organs, p.hu
    rng = np.random.default_rng(o["bowel_seed"])
    s, n = grid.spacing, grid.n
    ext = n * s / 2
    k = _CANDIDATES
    cand = rng.uniform(-ext, ext, size=(k, 2))
    scale = 1.0 - 0.25 * p.adiposity  # more visceral fat → smaller, sparser loops
    radius = rng.uniform(7.0, 16.0, k) * scale
    ecc = rng.uniform(0.45, 1.0, k)
    angle = rng.uniform(0, np.pi, k)
    kind = rng.choice(len(LOOP_KINDS), size=k, p=o["bowel_mix"])
    oral = rng.random(k) < (0.6 if o["oral"] else 0.0)
    level = rng.uniform(-0.6, 0.4, k)
    wall_mm = rng.uniform(1.5, 3.0, k)
    coeffs = rng.normal(0.0, 0.08, size=(k, 3, 2)) / np.arange(1, 4)[:, None]
    colon = [(rng.uniform(13, 22), rng.uniform(0, 25), rng.uniform(0, 3), harmonics(rng, 0.08, 3))
             for _ in range(3)]
    vessel_r = rng.uniform(1.2, 2.8, k)
    idx = np.clip(((cand + ext) / s).astype(int), 0, n - 1)
    inside = allowed[idx[:, 1], idx[:, 0]]
    if not allowed.any():
        return
    stool = smooth_noise(texture_rng, (n, n), max(1.2 / s, 0.5))
    target = o["bowel_fill"] * allowed.sum() * s * s
    placed: list[tuple[float, float, float]] = []
    covered = 0.0

    # colon: ascending (patient right = image left), descending, transverse (in front)
    rows = np.flatnonzero(allowed.any(axis=1))
    for i, (r, dy, dx, cc) in enumerate(colon):
        if i == 2 and not o["transverse_colon"]:
            break
        if i < 2:
            yc = p.body_dy + dy
            row = int(np.clip((yc + ext) / s, rows[0], rows[-1]))
            cols = np.flatnonzero(allowed[row])
            if cols.size == 0:
                continue
            edge = grid.coords[cols[0]] if i == 0 else grid.coords[cols[-1]]
            xc = edge + (r + dx) * (1 if i == 0 else -1)
        else:
            col = int(np.clip((p.body_dx + dy - 12 + ext) / s, 0, n - 1))
            rr = np.flatnonzero(allowed[:, col])
            if rr.size == 0:
                continue
            xc, yc = grid.coords[col], grid.coords[rr[0]] + r + dx
        box, ratio = blob_ratio(grid, xc, yc, r, r * 0.9, coeffs=cc)
        m = (ratio < 1) & allowed[box]
        if m.sum() < 0.5 * (ratio < 1).sum():
            continue
        lumen = m & (ratio < 1 - 2.0 / r)
        cv.paint(m, h["bowel_wall"], st.BOWEL_WALL, box)
        gas = lumen & (stool[box] > 1.2 - o["colon_gas"][i])
        cv.paint(lumen, np.where(stool[box][lumen] > -0.4, h["stool"] - 80, h["stool"]),
                 st.BOWEL_CONTENT, box)
        cv.paint(gas, -980, st.BOWEL_GAS, box)
        placed.append((xc, yc, r))
        covered += m.sum() * s * s

    centres = np.array([c[:2] for c in placed]).reshape(-1, 2)
    radii = np.array([c[2] for c in placed])
    used = np.zeros(k, bool)
    for j in np.flatnonzero(inside):
        if covered >= target:
            break
        cx, cy = cand[j]
        r = radius[j]
        if radii.size and (np.hypot(*(centres - cand[j]).T) < 0.8 * (radii + r * ecc[j])).any():
            continue
        box, ratio = blob_ratio(grid, cx, cy, r, r * ecc[j], angle=angle[j], coeffs=coeffs[j])
        whole = ratio < 1
        m = whole & allowed[box]
        if m.sum() < 0.8 * whole.sum():
            continue  # a loop does not squeeze behind the wall or into the retroperitoneum
        used[j] = True
        centres = np.vstack([centres, cand[j]])
        radii = np.append(radii, r * (0.5 + 0.5 * ecc[j]))
        covered += m.sum() * s * s
        _loop(cv, grid, p, box, m, ratio, r * ecc[j], cy + level[j] * r, LOOP_KINDS[kind[j]],
              oral[j], wall_mm[j], stool[box])

    # mesenteric vessels in the fat between the loops
    fat = cv.where(st.VISCERAL_FAT)
    left = [j for j in np.flatnonzero(inside & ~used)
            if fat[idx[j, 1], idx[j, 0]]][:8 + int(12 * o["bowel_fill"])]
    for j in left:
        box, m = blob(grid, *cand[j], vessel_r[j], vessel_r[j])
        cv.paint(m & allowed[box] & fat[box], h["blood_v"] if j % 3 else h["blood_a"], st.VEIN,
                 box)


def _loop(cv: Canvas, grid: Grid, p: Params, box, m: np.ndarray, ratio: np.ndarray, minor: float,
          level: float, kind: str, oral: bool, wall_mm: float, stool: np.ndarray) -> None:
    """One small-bowel loop (region ``m`` of ``box``, ``ratio`` as :func:`blob_ratio`)."""
    h = p.hu
    if kind == "collapsed":  # wall against wall: all soft tissue, a thin line of fluid inside
        cv.paint(m, h["bowel_wall"], st.BOWEL_WALL, box)
        cv.paint(m & (ratio < 0.25), h["fluid"], st.BOWEL_CONTENT, box)
        return
    lumen = m & (ratio < 1 - wall_mm / max(minor, wall_mm + 1))
    cv.paint(m, h["bowel_wall"], st.BOWEL_WALL, box)
    if kind == "fluid":
        cv.paint(lumen, h["oral_contrast"] if oral else h["fluid"], st.BOWEL_CONTENT, box)
    elif kind == "gas":  # supine: gas rises anteriorly over an air-fluid level
        y = grid.xy(box)[1]
        cv.paint(lumen, h["fluid"], st.BOWEL_CONTENT, box)
        cv.paint(lumen & (y < level), -1000, st.BOWEL_GAS, box)
    else:  # mottled: gas bubbles, fat-like and soft-tissue stool
        sv = stool[lumen]
        cv.paint(lumen, np.where(sv > 0.2, h["stool"] - 100, h["stool"]), st.BOWEL_CONTENT, box)
        cv.paint(lumen & (stool > 1.0), -950, st.BOWEL_GAS, box)
