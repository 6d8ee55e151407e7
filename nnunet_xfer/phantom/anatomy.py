"""The anatomy of one synthetic L3 axial slice: subject parameters and their rendering in HU.

Coordinates are millimetres in the image plane, x to the image right (patient left), y downwards
(posterior), origin at the image centre. Structures are drawn in painter's order (fat, bowel,
muscle, organs, bone) so later tissues cover earlier ones; the skeletal-muscle mask is tracked
alongside and loses whatever bone or organ is drawn over it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom.shapes import (Grid, blob, blob_ratio, harmonics, perturb, smooth_noise,
                                       superellipse_radius)


@dataclass
class Params:
    """Everything that makes one subject: body habitus, muscles, bones, organs, tissue HU."""

    sex: str
    height_m: float
    adiposity: float          # 0 lean … 1 obese: body size, fat thickness, visceral fat
    muscularity: float        # multiplies every muscle's thickness
    myosteatosis: float       # 0 healthy … 1 severe: lower muscle HU, more intramuscular fat
    contrast: bool            # portal-venous contrast (bright vessels, kidneys, bowel wall)
    fov_mm: float             # reconstruction field of view (the 512² spacing is fov/512)
    body_dx: float
    body_dy: float
    half_width: float
    half_ap_ant: float
    half_ap_post: float
    back_n: float             # superellipse exponent of the back (flattened on the table)
    body_coeffs: np.ndarray
    fat_thickness: float
    fat_profile: np.ndarray   # relative subcutaneous fat thickness at _FAT_NODES
    hu: dict = field(default_factory=dict)
    muscle: dict = field(default_factory=dict)
    spine: dict = field(default_factory=dict)
    organs: dict = field(default_factory=dict)


#: Angles from the anterior midline (radians) where the subcutaneous-fat profile is given.
_FAT_NODES = np.array([0.0, 0.5, 1.0, 1.6, 2.2, 2.7, np.pi])
_FAT_BASE = np.array([1.0, 1.05, 1.15, 1.1, 0.8, 0.55, 0.45])


def sample_params(rng: np.random.Generator) -> Params:
    """Draw one subject; all randomness of its anatomy (not of the pixel texture) is drawn here."""
    male = rng.random() < 0.5
    height = float(np.clip(rng.normal(1.76 if male else 1.63, 0.07), 1.45, 2.02))
    adip = float(rng.beta(2.0, 2.5))
    musc = float(np.clip(1.0 + 0.1 * rng.normal() + (0.07 if male else -0.07)
                         + 0.6 * (height - 1.70), 0.7, 1.35))
    myo = float(rng.beta(1.4, 3.0))
    half_width = float(np.clip(128 + 70 * adip + 45 * (musc - 1) + rng.normal(0, 6), 112, 205))
    ratio = float(np.clip(0.66 + 0.1 * adip + rng.normal(0, 0.035), 0.58, 0.85))
    half_ap = half_width * ratio
    margin = rng.uniform(25, 70)  # mm of air around the body inside the field of view
    p = Params(
        sex="M" if male else "F", height_m=round(height, 3), adiposity=adip, muscularity=musc,
        myosteatosis=myo, contrast=bool(rng.random() < 0.6), fov_mm=0.0,
        body_dx=float(rng.normal(0, 4)), body_dy=float(rng.normal(-12, 5)),
        half_width=half_width, half_ap_ant=half_ap * float(rng.uniform(1.0, 1.12)),
        half_ap_post=half_ap * float(rng.uniform(0.82, 0.92)), back_n=float(rng.uniform(2.0, 2.5)),
        body_coeffs=harmonics(rng, 0.035, 6),
        fat_thickness=float(np.clip(5 + 42 * adip ** 1.4 * (1.25 if not male else 0.9)
                                    + rng.normal(0, 2.5), 3, 75)),
        fat_profile=_FAT_BASE * np.exp(rng.normal(0, 0.12, size=_FAT_BASE.size)),
    )
    _fit_field_of_view(p, margin)
    mu = 54 - 42 * myo + rng.normal(0, 4)
    p.hu = {
        "subcut_fat": rng.uniform(-112, -92), "visceral_fat": rng.uniform(-100, -80),
        "muscle": mu, "skin": rng.uniform(10, 40),
        "cortex": rng.uniform(450, 800), "cancellous": rng.uniform(110, 260) - 60 * myo,
        "csf": rng.uniform(5, 20), "bowel_wall": rng.uniform(60, 90) if p.contrast else 40.0,
        "blood_a": rng.uniform(140, 220) if p.contrast else rng.uniform(35, 50),
        "blood_v": rng.uniform(100, 170) if p.contrast else rng.uniform(35, 50),
        "kidney": rng.uniform(140, 200) if p.contrast else rng.uniform(25, 40),
        "fluid": rng.uniform(0, 25), "oral_contrast": rng.uniform(150, 350),
    }
    m = musc
    p.muscle = {
        "rectus_t": 12.0 * m * rng.uniform(0.85, 1.15), "rectus_end": rng.uniform(0.42, 0.56),
        "linea_alba": rng.uniform(0.012, 0.035), "semilunaris": rng.uniform(0.02, 0.05),
        "eo_t": 8.0 * m * rng.uniform(0.8, 1.2), "io_t": 9.5 * m * rng.uniform(0.8, 1.2),
        "ta_t": 5.0 * m * rng.uniform(0.8, 1.2), "plane": rng.uniform(0.8, 2.0),
        "ld_t": 7.0 * m * rng.uniform(0.7, 1.3),
        "psoas_a": 15.0 * m * rng.uniform(0.85, 1.15),
        "psoas_b": 12.5 * m * rng.uniform(0.85, 1.15),
        "ql_a": 17.0 * m * rng.uniform(0.85, 1.15), "ql_b": 9.0 * m * rng.uniform(0.85, 1.2),
        "es_w": 47.0 * m ** 0.7 * rng.uniform(0.9, 1.1),
        "es_d": 44.0 * m ** 0.7 * rng.uniform(0.9, 1.1),
        "side": {s: float(np.exp(rng.normal(0, 0.06))) for s in ("L", "R")},  # asymmetry
        "group_hu": rng.normal(0, 4, size=8),
        "coeffs": [harmonics(rng, 0.05, 4) for _ in range(8)],
    }
    p.spine = {
        "vw": 46 + (4 if male else 0) + rng.normal(0, 2),
        "vd": 33 + (2 if male else 0) + rng.normal(0, 1.5),
        "cortex": rng.uniform(1.2, 2.0), "tp_len": rng.uniform(20, 30), "sp_w": rng.uniform(5, 8),
        "sp_len": rng.uniform(28, 38),
        "canal_w": rng.uniform(18, 24), "canal_d": rng.uniform(12, 16),
    }
    p.organs = {
        "kidney": [bool(rng.random() < 0.85), bool(rng.random() < 0.85)],
        "kidney_ab": [(rng.uniform(14, 24), rng.uniform(11, 16)) for _ in range(2)],
        "kidney_dx": rng.uniform(12, 30), "kidney_angle": rng.uniform(0.3, 0.7),
        "aorta_r": rng.uniform(8, 12.5), "ivc": (rng.uniform(10, 16), rng.uniform(6, 10)),
        "bowel_n": int(rng.integers(22, 40) * (1 - 0.4 * adip)),
        "bowel_seed": int(rng.integers(2**31)),
        "colon_gas": [rng.uniform(0.1, 0.7) for _ in range(2)],
        "calcified": bool(rng.random() < 0.3 + 0.4 * myo),
        "scarpa": bool(rng.random() < 0.6),
        "liver": bool(rng.random() < 0.35),  # tip of the right lobe reaches L3 in some subjects
        "liver_ab": (rng.uniform(25, 45), rng.uniform(15, 28)),
        "liver_hu": rng.uniform(95, 120) if p.contrast else rng.uniform(50, 65),
    }
    return p


def body_outline(p: Params, theta: np.ndarray) -> np.ndarray:
    """Skin radius (mm) from the body centre along image angle ``theta`` (π/2 points posterior)."""
    b = np.where(np.sin(theta) < 0, p.half_ap_ant, p.half_ap_post)
    n = np.where(np.sin(theta) < 0, 2.0, p.back_n)
    return superellipse_radius(theta, p.half_width, b, n) * perturb(theta, p.body_coeffs)


def _fit_field_of_view(p: Params, margin: float) -> None:
    """Choose the FOV (0.6–0.9 mm pixels at 512²) that holds the body with ``margin`` mm of air;
    a body too large for the widest FOV is shrunk to fit, so no slice is truncated."""
    fov_max = 0.9 * 512
    t = np.linspace(-np.pi, np.pi, 721)
    while True:
        r = body_outline(p, t)
        extent = max(np.abs(p.body_dx + r * np.cos(t)).max(),
                     np.abs(p.body_dy + r * np.sin(t)).max())
        if 2 * extent + 10 <= fov_max:
            break
        p.half_width *= 0.98
        p.half_ap_ant *= 0.98
        p.half_ap_post *= 0.98
    p.fov_mm = float(np.clip(2 * extent + margin, 0.6 * 512, fov_max))


@dataclass
class Rendering:
    """One subject drawn on a grid: noise-free HU, skeletal muscle and body masks, fat mask."""

    hu: np.ndarray
    muscle: np.ndarray
    body: np.ndarray
    fat: np.ndarray


def render(p: Params, grid: Grid, texture_rng: np.random.Generator) -> Rendering:
    """Draw subject ``p`` on ``grid``; ``texture_rng`` drives only the pixel-level randomness."""
    n, s = grid.n, grid.spacing
    x, y = grid.xy()
    dx, dy = x - p.body_dx, y - p.body_dy
    theta = np.arctan2(dy, dx)
    rho = np.hypot(dx, dy)
    aphi = np.abs(np.arctan2(dx, -dy))  # 0 anterior midline … π posterior midline
    right = np.broadcast_to(dx < 0, rho.shape)  # image left = patient right

    def body_radius(t: np.ndarray) -> np.ndarray:
        return body_outline(p, t)

    def fat_t(ap: np.ndarray) -> np.ndarray:
        return p.fat_thickness * np.interp(ap, _FAT_NODES, p.fat_profile)

    r_body = body_radius(theta)
    r_wall = r_body - fat_t(aphi)
    body = rho < r_body
    depth = r_wall - rho  # mm inside the outer surface of the muscle wall, along the ray

    hu = np.full((n, n), -1000.0)
    _table(hu, grid, p, body_radius)
    hu[body] = p.hu["subcut_fat"]
    hu[body & (r_body - rho < 1.8)] = p.hu["skin"]
    if p.organs["scarpa"]:
        hu[body & (np.abs(r_body - rho - 0.45 * fat_t(aphi)) < 0.45) & (aphi < 2.2)] = -45
    inner = depth > 0
    hu[inner] = p.hu["visceral_fat"]

    mu = p.muscle
    side = np.where(right, mu["side"]["R"], mu["side"]["L"])
    wobble = perturb(theta, mu["coeffs"][0])  # the wall is thicker in places

    def taper(a0: float, a1: float, w: float = 0.12) -> np.ndarray:
        return np.sqrt(np.clip(np.minimum(aphi - a0, a1 - aphi) / w, 0, 1))

    # Posterior landmarks follow the back: the erector spinae fill the space between the
    # transverse processes and the posterior fat, the vertebra lies in front of them.
    sp = p.spine
    y_back = p.body_dy + float(body_radius(np.array(np.pi / 2))) - fat_t(np.array(np.pi))
    half_d = sp["vd"] / 2
    vy = y_back - mu["es_d"] - half_d - sp["canal_d"] / 2 - 1
    vx = p.body_dx
    y_tp = vy + half_d + sp["canal_d"] / 2 + 1  # canal centre and transverse-process level
    ps_x, ps_y = sp["vw"] / 2 + 0.55 * mu["psoas_a"], vy + 0.1 * sp["vd"]
    ql_x, ql_y = sp["vw"] / 2 + 1.45 * mu["psoas_a"] + 0.55 * mu["ql_a"], y_tp - 3
    end = min(2.05, float(np.arctan2(ql_x + mu["ql_a"], -(ql_y - p.body_dy))))  # flank ends

    muscle = np.zeros((n, n), bool)
    mhu = np.full((n, n), np.nan)

    def add(region: np.ndarray, k: int, box: tuple[slice, slice] | None = None) -> None:
        """Mark ``region`` (of ``box``) as muscle group ``k``."""
        value = p.hu["muscle"] + mu["group_hu"][k]
        if box is None:
            muscle[region] = True
            mhu[region] = value
        else:
            muscle[box][region] = True
            mhu[box][region] = value

    # Anterior and lateral abdominal wall: rectus; external oblique, internal oblique and
    # transversus abdominis as layered bands separated by thin fat planes.
    ra_t = mu["rectus_t"] * side * wobble * taper(mu["linea_alba"], mu["rectus_end"], 0.1)
    add(inner & (depth < ra_t), 0)
    a0 = mu["rectus_end"] + mu["semilunaris"]
    eo = mu["eo_t"] * side * wobble * taper(a0 + 0.08, end + 0.15, 0.35)
    io = mu["io_t"] * side * wobble * taper(a0, end, 0.25)
    ta = mu["ta_t"] * side * taper(a0 + 0.05, end - 0.05, 0.2)
    g1 = mu["plane"] * (eo > 0.5)
    g2 = mu["plane"] * (io > 0.5)
    add(inner & (depth < eo), 1)
    add((depth > eo + g1) & (depth < eo + g1 + io), 2)
    add((depth > eo + g1 + io + g2) & (depth < eo + g1 + io + g2 + ta), 3)
    # latissimus dorsi: thin posterolateral band under the skin fat
    ld = mu["ld_t"] * side * taper(end - 0.35, end + 0.4, 0.2)
    add(inner & (depth < ld) & (aphi > end - 0.35), 4)
    wall = np.maximum(ra_t, eo + g1 + io + g2 + ta) + 1.5 + 6 * p.adiposity

    # Cavity: inside the wall and in front of the spine; bowel and vessels live here.
    cavity = (depth > wall) & (y < vy + sp["vd"] * 0.2) & (aphi < end + 0.2)

    # Retroperitoneum: psoas, quadratus lumborum, erector spinae (with multifidus); the thin
    # fat cleft between multifidus and longissimus is not muscle.
    c = mu["coeffs"]
    retro = np.zeros((n, n), bool)
    gaps = np.zeros((n, n), bool)
    for sgn, key, cs in ((-1, "R", 0), (1, "L", 1)):
        f = mu["side"][key]
        box, m = blob(grid, vx + sgn * ps_x, ps_y, mu["psoas_a"] * f, mu["psoas_b"] * f,
                      angle=sgn * 0.6, coeffs=c[2 + cs])
        add(m, 5, box)
        retro[box] |= m
        box, m = blob(grid, vx + sgn * ql_x, ql_y, mu["ql_a"] * f, mu["ql_b"] * f,
                      angle=-sgn * 0.45, coeffs=c[4 + cs])
        add(m, 6, box)
        retro[box] |= m
        es_w = mu["es_w"] * f
        es_x = vx + sgn * (sp["sp_w"] / 2 + 0.5 + es_w / 2)
        box, m = blob(grid, es_x, y_tp + mu["es_d"] / 2 - 1, es_w / 2, mu["es_d"] / 2 + 3, n=2.3,
                      coeffs=c[6 + cs])
        m &= inner[box]
        add(m, 7, box)
        retro[box] |= m
        box, m = blob(grid, vx + sgn * (sp["sp_w"] / 2 + 0.42 * es_w), y_back - 0.3 * mu["es_d"],
                      0.35 * mu["es_d"], 0.6, angle=np.pi / 2 - sgn * 0.3)
        gaps[box] |= m

    o = p.organs
    if o["liver"]:
        box, m = blob(grid, p.body_dx - 0.5 * p.half_width, vy - 0.4 * o["liver_ab"][0],
                      *o["liver_ab"], angle=0.6, coeffs=c[3])
        m &= (depth > wall)[box] & ~_grow(muscle, grid, 2.0)[box]
        hu[box][m] = o["liver_hu"]
        retro[box] |= m
    _bowel(hu, grid, p, cavity & ~_grow(retro, grid, 4.0), texture_rng)

    organs = np.zeros((n, n), bool)
    for i, sgn in enumerate((-1, 1)):
        if o["kidney"][i]:
            ka, kb = o["kidney_ab"][i]
            box, m = blob(grid, vx + sgn * (ps_x + mu["psoas_a"] + 0.6 * ka + o["kidney_dx"] / 3),
                          vy - 4, ka, kb, angle=-sgn * o["kidney_angle"], coeffs=c[i])
            hu[box][m] = p.hu["kidney"]
            organs[box] |= m
    aorta_c = (vx + 0.25 * sp["vw"] + 2, vy - sp["vd"] / 2 - o["aorta_r"] - 2)
    box, m = blob(grid, *aorta_c, o["aorta_r"], o["aorta_r"])
    hu[box][m] = p.hu["blood_a"]
    organs[box] |= m
    if o["calcified"]:
        r = o["aorta_r"]
        box, m = blob(grid, aorta_c[0] + 0.7 * r, aorta_c[1] + 0.5 * r, 1.5, 1.2)
        hu[box][m] = 600
    box, m = blob(grid, vx - 0.45 * sp["vw"] - 4, vy - sp["vd"] / 2 - o["ivc"][1] - 2, *o["ivc"],
                  angle=0.2)
    hu[box][m] = p.hu["blood_v"]
    organs[box] |= m

    bone = _spine(hu, grid, p, vx, vy, y_back)
    hu[gaps & muscle] = p.hu["visceral_fat"]
    muscle &= ~(bone | organs | gaps)

    # Muscle tissue: per-group HU, gentle texture, intramuscular fat specks (myosteatosis).
    tex = smooth_noise(texture_rng, (n, n), 2.0 / s)
    specks = smooth_noise(texture_rng, (n, n), max(0.6 / s, 0.5))
    frac = 0.004 + 0.08 * p.myosteatosis ** 1.5
    thr = np.quantile(specks[muscle], 1 - frac) if muscle.any() else np.inf
    hu[muscle] = mhu[muscle] + 4 * tex[muscle]
    fatty = muscle & (specks > thr)
    hu[fatty] = p.hu["visceral_fat"] + 25 * tex[fatty]
    fat = body & (hu < -30) & (hu > -300)
    return Rendering(hu=hu, muscle=muscle, body=body, fat=fat)


def _grow(mask: np.ndarray, grid: Grid, mm: float) -> np.ndarray:
    """``mask`` dilated by ``mm`` millimetres."""
    return ndimage.distance_transform_edt(~mask, sampling=grid.spacing) <= mm


def _table(hu: np.ndarray, grid: Grid, p: Params, body_radius) -> None:
    """The curved CT table under the back (it only shows where it falls inside the FOV)."""
    x, y = grid.xy()
    y0 = p.body_dy + float(body_radius(np.array(np.pi / 2))) + 2
    curve = y0 + 60 - np.sqrt(np.maximum(600.0 ** 2 - (x - p.body_dx) ** 2, 0)) + 540
    band = (y > curve) & (y < curve + 3)
    hu[band] = 150
    hu[(y > curve + 14) & (y < curve + 16)] = 80


def _spine(hu: np.ndarray, grid: Grid, p: Params, vx: float, vy: float,
           y_back: float) -> np.ndarray:
    """Vertebral body with cortex, canal, pedicles, laminae, spinous and transverse processes;
    the spinous process stops short of ``y_back``, the posterior surface of the back muscles."""
    sp = p.spine
    bone = np.zeros(hu.shape, bool)
    a, b = sp["vw"] / 2, sp["vd"] / 2
    box, ratio = blob_ratio(grid, vx, vy, a, b, n=2.3)
    outer = ratio < 1
    x, yy = grid.xy(box)
    # kidney-bean body: the posterior border is concave around the canal
    outer &= ~((np.hypot((x - vx) / (0.5 * a), (yy - vy - 1.3 * b) / (0.5 * b))) < 1)
    inner = outer & (ratio < 1 - sp["cortex"] / b)
    hu[box][outer] = p.hu["cortex"]
    hu[box][inner] = p.hu["cancellous"]
    bone[box] |= outer
    post = np.zeros(hu.shape, bool)
    cw, cd = sp["canal_w"] / 2, sp["canal_d"] / 2
    cy = vy + b + cd + 1
    box, m = blob(grid, vx, cy + 1, cw + 5, cd + 5.5, n=2.2)
    post[box] |= m  # pedicles and laminae: a ring around the canal (cut out below)
    for sgn in (-1, 1):
        box, m = blob(grid, vx + sgn * (cw + sp["tp_len"] / 2 + 2), cy - 1, sp["tp_len"] / 2 + 3,
                      3.2, angle=sgn * 0.18, n=2.5)
        post[box] |= m
        box, m = blob(grid, vx + sgn * (cw + 1), cy + cd + 2.5, 5.5, 5.0)
        post[box] |= m  # articular processes
    sp_len = max(min(sp["sp_len"], y_back - 4 - (cy + cd + 3)), 8.0)
    box, m = blob(grid, vx, cy + cd + 3 + sp_len / 2, sp["sp_w"] / 2, sp_len / 2, n=3.0)
    post[box] |= m
    hu[post] = 0.55 * p.hu["cortex"] + 0.45 * p.hu["cancellous"]  # thinner cortex, more marrow
    box, canal = blob(grid, vx, cy, cw, cd, n=1.6)
    hu[box][canal] = p.hu["csf"]
    post[box] &= ~canal
    return bone | post


def _bowel(hu: np.ndarray, grid: Grid, p: Params, allowed: np.ndarray,
           texture_rng: np.random.Generator) -> None:
    """Small-bowel loops and colon (walls, fluid, gas with air–fluid levels, stool), mesenteric
    vessels; each clipped to ``allowed``. Positions are drawn in mm so they do not depend on the
    grid's resolution."""
    rng = np.random.default_rng(p.organs["bowel_seed"])
    n = grid.n
    ext = grid.n * grid.spacing / 2
    cand = rng.uniform(-ext, ext, size=(400, 2))
    idx = np.clip(((cand + ext) / grid.spacing).astype(int), 0, n - 1)
    ok = allowed[idx[:, 1], idx[:, 0]]
    pts = cand[ok]
    if len(pts) == 0:
        return
    n_loops = min(len(pts), p.organs["bowel_n"])
    scale = 1.0 - 0.35 * p.adiposity  # more visceral fat → smaller, sparser loops
    vessels = pts[n_loops: n_loops + 12]
    for vx_, vy_ in vessels:
        box, m = blob(grid, vx_, vy_, rng.uniform(1.2, 2.8), rng.uniform(1.2, 2.8))
        m &= allowed[box]
        hu[box][m] = p.hu["blood_v"]
    stool = smooth_noise(texture_rng, (n, n), max(1.2 / grid.spacing, 0.5))
    for cx, cy in pts[:n_loops]:
        r = rng.uniform(7, 17) * scale
        box, ratio = blob_ratio(grid, cx, cy, r, r * rng.uniform(0.35, 1.0),
                                angle=rng.uniform(0, np.pi), coeffs=harmonics(rng, 0.08, 3))
        kind, oral, level = rng.random(), rng.random() < 0.3, cy + rng.uniform(-0.6, 0.4) * r
        m = ratio < 1
        if (m & allowed[box]).sum() < 0.85 * m.sum():
            continue  # a loop does not squeeze behind the wall or into the retroperitoneum
        m &= allowed[box]
        lumen = m & (ratio < 1 - 2.2 / r)
        hu[box][m] = p.hu["bowel_wall"]
        y = grid.xy(box)[1]
        if kind < 0.35:
            hu[box][lumen] = p.hu["oral_contrast"] if oral else p.hu["fluid"]
        elif kind < 0.65:
            gas = lumen & (y < level)  # supine: gas rises anteriorly over an air-fluid level
            hu[box][lumen] = p.hu["fluid"]
            hu[box][gas] = -1000
        else:
            st = stool[box]
            hu[box][lumen] = np.where(st[lumen] > 0.9, -950, np.where(st[lumen] > 0.2, -150, 20))
    # ascending (patient right) and descending colon against the flanks, stool and gas
    for i, sgn in enumerate((-1, 1)):
        r = rng.uniform(13, 22)
        xs = p.body_dx + sgn * (p.half_width * 0.55 + rng.uniform(-10, 10))
        ys = p.body_dy + rng.uniform(0, 25)
        box, ratio = blob_ratio(grid, xs, ys, r, r * 0.9, coeffs=harmonics(rng, 0.08, 3))
        m = ratio < 1
        if (m & allowed[box]).sum() < 0.7 * m.sum():
            continue
        m &= allowed[box]
        lumen = m & (ratio < 1 - 2.0 / r)
        hu[box][m] = p.hu["bowel_wall"]
        st = stool[box]
        gas_thr = 1.2 - p.organs["colon_gas"][i]
        hu[box][lumen] = np.where(st[lumen] > gas_thr, -980, np.where(st[lumen] > -0.4, -120, 25))
