"""The anatomy of one synthetic L3 axial slice: subject parameters and their rendering in HU.

Coordinates are millimetres in the image plane, x to the image right (patient left), y downwards
(posterior), origin at the image centre. Structures are painted on a :class:`Canvas` in painter's
order — table, arms, skin and subcutaneous fat with its fasciae, the muscles with the fat planes
between them, the abdominal organs, vessels, crura and bowel (``viscera.py``), the vertebra — so
later structures cover earlier ones. A structure-id map is painted alongside the HU; the L3
skeletal-muscle truth is whatever is still labelled muscle at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom import arms, viscera
from nnunet_xfer.phantom import structures as st
from nnunet_xfer.phantom.canvas import Canvas, Landmarks
from nnunet_xfer.phantom.shapes import (Grid, blob, blob_ratio, harmonics, perturb, polar_lookup,
                                       smooth_noise, superellipse_radius)

#: Contrast phases and how often each occurs in the cohort.
PHASES = ("none", "arterial", "portal")
PHASE_P = (0.4, 0.15, 0.45)
#: Noise SD (HU) of a medium-sized subject at 512² for each dose level, and how often each occurs.
DOSES = {"high": 9.0, "standard": 13.0, "low": 21.0}
DOSE_P = (0.2, 0.55, 0.25)
#: Fraction of subjects scanned with their arms down beside the torso.
ARMS_DOWN = 0.3
#: Largest reconstruction field of view (mm): 0.9 mm pixels at 512², 500 mm with the arms down.
FOV_MAX_MM = 0.9 * 512
FOV_MAX_ARMS_MM = 500.0


@dataclass
class Params:
    """Everything that makes one subject: body habitus, muscles, bones, organs, tissue HU, arms,
    and the scan (contrast phase, dose, kernel, artefacts)."""

    sex: str
    height_m: float
    adiposity: float          # 0 lean … 1 obese: body size, fat thickness, visceral fat
    muscularity: float        # multiplies every muscle's thickness
    myosteatosis: float       # 0 healthy … 1 severe: lower muscle HU, more intramuscular fat
    phase: str                # contrast phase: none, arterial or portal (venous)
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
    arms: list = field(default_factory=list)   # one dict per arm beside the torso (none: raised)
    scan: dict = field(default_factory=dict)

    @property
    def contrast(self) -> bool:
        """Intravenous contrast given (arterial or portal-venous phase)."""
        return self.phase != "none"


#: Angles from the anterior midline (radians) where the subcutaneous-fat profile is given.
_FAT_NODES = np.array([0.0, 0.5, 1.0, 1.6, 2.2, 2.7, np.pi])
_FAT_BASE = np.array([1.0, 1.05, 1.15, 1.1, 0.8, 0.55, 0.45])


def _phase_hu(rng: np.random.Generator, phase: str) -> dict:
    """HU of blood, kidney, liver, spleen and bowel wall in one contrast phase."""
    u = rng.uniform
    if phase == "none":
        return {"blood_a": u(35, 50), "blood_v": u(35, 50), "kidney": u(25, 40),
                "kidney_medulla": u(25, 40), "liver": u(50, 65), "spleen": u(40, 55),
                "bowel_wall": u(30, 45)}
    if phase == "arterial":  # bright aorta, unopacified IVC, corticomedullary kidneys
        return {"blood_a": u(250, 400), "blood_v": u(45, 75), "kidney": u(150, 230),
                "kidney_medulla": u(50, 90), "liver": u(65, 85), "spleen": u(90, 130),
                "bowel_wall": u(70, 110)}
    return {"blood_a": u(140, 200), "blood_v": u(110, 170), "kidney": u(130, 190),
            "kidney_medulla": u(120, 170), "liver": u(95, 125), "spleen": u(105, 130),
            "bowel_wall": u(55, 90)}


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
    phase = str(rng.choice(PHASES, p=PHASE_P))
    p = Params(
        sex="M" if male else "F", height_m=round(height, 3), adiposity=adip, muscularity=musc,
        myosteatosis=myo, phase=phase, fov_mm=0.0,
        body_dx=float(rng.normal(0, 4)), body_dy=float(rng.normal(-12, 5)),
        half_width=half_width, half_ap_ant=half_ap * float(rng.uniform(1.0, 1.12)),
        half_ap_post=half_ap * float(rng.uniform(0.82, 0.92)), back_n=float(rng.uniform(2.0, 2.5)),
        body_coeffs=harmonics(rng, 0.035, 6),
        fat_thickness=float(np.clip(5 + 42 * adip ** 1.4 * (1.25 if not male else 0.9)
                                    + rng.normal(0, 2.5), 3, 75)),
        fat_profile=_FAT_BASE * np.exp(rng.normal(0, 0.12, size=_FAT_BASE.size)),
    )
    mu = 58 - 42 * myo + rng.normal(0, 4)
    p.hu = {
        "subcut_fat": rng.uniform(-112, -92), "visceral_fat": rng.uniform(-100, -80),
        "muscle": mu, "skin": rng.uniform(10, 40), "fascia": rng.uniform(-10, 30),
        "cortex": rng.uniform(450, 800), "cancellous": rng.uniform(110, 260) - 60 * myo,
        "csf": rng.uniform(5, 20), "fluid": rng.uniform(0, 25),
        "oral_contrast": rng.uniform(150, 350), "stool": rng.uniform(-60, 30),
        **_phase_hu(rng, phase),
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
        # fat planes between touching muscles (psoas–QL, QL–erector spinae, …), wider with fat
        "intermuscular_mm": float(rng.uniform(0.6, 1.6) + 1.2 * adip),
        "es_septum": float(rng.uniform(0.4, 1.0)),  # longissimus–iliocostalis septum position
    }
    p.spine = {
        "vw": 46 + (4 if male else 0) + rng.normal(0, 2),
        "vd": 33 + (2 if male else 0) + rng.normal(0, 1.5),
        "cortex": rng.uniform(1.2, 2.0), "tp_len": rng.uniform(20, 30), "sp_w": rng.uniform(5, 8),
        "sp_len": rng.uniform(28, 38),
        "canal_w": rng.uniform(18, 24), "canal_d": rng.uniform(12, 16),
    }
    p.organs = viscera.sample(rng, p)
    p.arms = arms.sample(rng, p) if rng.random() < ARMS_DOWN else []
    dose = str(rng.choice(list(DOSES), p=DOSE_P))
    p.scan = {
        "dose": dose,
        # noise SD at 512²: larger patients are noisier at the same dose
        "noise_sd": DOSES[dose] * float(np.exp((half_width - 150) / 110) * rng.uniform(0.9, 1.1)),
        "nps_peak": float(rng.uniform(0.2, 0.32)),  # cycles/mm: soft … standard kernels
        "psf_mm": float(rng.uniform(0.4, 0.8)),     # in-plane resolution (Gaussian sigma)
        "streaks": bool(rng.random() < (0.6 if p.arms else 0.12)),
        "artefact_seed": int(rng.integers(2**31)),
        "cupping_hu": float(rng.uniform(0, 14) * adip),
        "table_gap": float(rng.uniform(6, 25)),    # mm of mattress between the back and the table
    }
    _fit_field_of_view(p, margin)
    return p


def body_outline(p: Params, theta: np.ndarray) -> np.ndarray:
    """Skin radius (mm) from the body centre along image angle ``theta`` (π/2 points posterior)."""
    b = np.where(np.sin(theta) < 0, p.half_ap_ant, p.half_ap_post)
    n = np.where(np.sin(theta) < 0, 2.0, p.back_n)
    return superellipse_radius(theta, p.half_width, b, n) * perturb(theta, p.body_coeffs)


def _fit_field_of_view(p: Params, margin: float) -> None:
    """Choose the FOV that holds the torso with ``margin`` mm of air (0.6–0.9 mm pixels at 512²);
    a torso too large for the widest FOV is shrunk to fit, so it is never truncated. With the arms
    down the FOV widens up to 500 mm (0.98 mm pixels) and what is still outside is cut off, as
    on a scanner."""
    t = np.linspace(-np.pi, np.pi, 721)
    while True:
        r = body_outline(p, t)
        extent = max(np.abs(p.body_dx + r * np.cos(t)).max(),
                     np.abs(p.body_dy + r * np.sin(t)).max())
        if 2 * extent + 10 <= FOV_MAX_MM:
            break
        p.half_width *= 0.98
        p.half_ap_ant *= 0.98
        p.half_ap_post *= 0.98
    p.fov_mm = float(np.clip(2 * extent + margin, 0.6 * 512, FOV_MAX_MM))
    if p.arms:
        reach = max(arms.lateral_extent(p, a, body_outline) for a in p.arms)
        p.fov_mm = float(np.clip(max(p.fov_mm, 2 * reach + 0.3 * margin), p.fov_mm,
                                 FOV_MAX_ARMS_MM))


@dataclass
class Rendering:
    """One subject drawn on a grid: noise-free HU, structure ids, and the masks the simulated
    experts need (L3 skeletal-muscle truth, torso body, fat)."""

    hu: np.ndarray
    tissue: np.ndarray
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

    r_body = polar_lookup(body_radius, theta)
    r_wall = r_body - fat_t(aphi)
    body = rho < r_body
    depth = r_wall - rho  # mm inside the outer surface of the muscle wall, along the ray

    cv = Canvas.empty(n, -1000.0, st.AIR)
    _table(cv, grid, p, body_radius)
    for arm in p.arms:
        arms.draw(cv, grid, p, arm, body_outline)
    cv.paint(body, p.hu["subcut_fat"], st.SUBCUT_FAT)
    cv.paint(body & (r_body - rho < 1.8), p.hu["skin"], st.SKIN)
    _fasciae(cv, grid, p, body, r_body - rho, fat_t(aphi), aphi, texture_rng)
    inner = depth > 0
    cv.paint(inner, p.hu["visceral_fat"], st.VISCERAL_FAT)

    mu = p.muscle
    side = np.where(right, mu["side"]["R"], mu["side"]["L"])
    wobble = polar_lookup(lambda t: perturb(t, mu["coeffs"][0]), theta)  # thicker in places
    group = np.full((n, n), -1, np.int8)

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

    def add(region: np.ndarray, k: int, box: tuple[slice, slice] | None = None) -> None:
        """Mark ``region`` (of ``box``) as muscle group ``k``."""
        cv.paint(region, 0.0, st.MUSCLE, box)
        (group if box is None else group[box])[region] = k

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

    # Retroperitoneum: psoas, quadratus lumborum, erector spinae (with multifidus); the thin
    # fat clefts between multifidus and longissimus and between longissimus and iliocostalis
    # are not muscle.
    c = mu["coeffs"]
    gaps = np.zeros((n, n), bool)
    for sgn, key, cs in ((-1, "R", 0), (1, "L", 1)):
        f = mu["side"][key]
        box, m = blob(grid, vx + sgn * ps_x, ps_y, mu["psoas_a"] * f, mu["psoas_b"] * f,
                      angle=sgn * 0.6, coeffs=c[2 + cs])
        add(m, 5, box)
        box, m = blob(grid, vx + sgn * ql_x, ql_y, mu["ql_a"] * f, mu["ql_b"] * f,
                      angle=-sgn * 0.45, coeffs=c[4 + cs])
        add(m, 6, box)
        es_w = mu["es_w"] * f
        es_x = vx + sgn * (sp["sp_w"] / 2 + 0.5 + es_w / 2)
        box, m = blob(grid, es_x, y_tp + mu["es_d"] / 2 - 1, es_w / 2, mu["es_d"] / 2 + 3, n=2.3,
                      coeffs=c[6 + cs])
        m &= inner[box]
        add(m, 7, box)
        box, m = blob(grid, vx + sgn * (sp["sp_w"] / 2 + 0.42 * es_w), y_back - 0.3 * mu["es_d"],
                      0.35 * mu["es_d"], 0.6, angle=np.pi / 2 - sgn * 0.3)
        gaps[box] |= m
        box, m = blob(grid, vx + sgn * (sp["sp_w"] / 2 + (0.62 + 0.2 * mu["es_septum"]) * es_w),
                      y_back - 0.25 * mu["es_d"], 0.3 * mu["es_d"], 0.45,
                      angle=np.pi / 2 + sgn * 0.2)
        gaps[box] |= m
    cv.paint(gaps & cv.where(st.MUSCLE), p.hu["visceral_fat"], st.INTERMUSCULAR_FAT)
    _intermuscular_planes(cv, grid, group, mu["intermuscular_mm"], p.hu["visceral_fat"])

    lm = Landmarks(vx=vx, vy=vy, vw=sp["vw"], vd=sp["vd"], y_back=y_back, ps_x=ps_x, ps_y=ps_y,
                   psoas_a=mu["psoas_a"], ql_x=ql_x, ql_y=ql_y, wall=wall)
    cavity = (depth > wall) & (y < vy + sp["vd"] * 0.2) & (aphi < end + 0.2)
    viscera.draw(cv, grid, p, lm, cavity, depth > wall, texture_rng)
    _spine(cv, grid, p, vx, vy, y_back)

    # Muscle tissue: per-group HU, gentle texture, intramuscular fat specks (myosteatosis).
    muscle = cv.where(st.MUSCLE)
    tex = smooth_noise(texture_rng, (n, n), 2.0 / s)
    specks = smooth_noise(texture_rng, (n, n), max(0.6 / s, 0.5))
    frac = 0.004 + 0.08 * p.myosteatosis ** 1.5
    thr = np.quantile(specks[muscle], 1 - frac) if muscle.any() else np.inf
    base = p.hu["muscle"] + mu["group_hu"][np.clip(group, 0, 7)]
    cv.hu[muscle] = base[muscle] + 4 * tex[muscle]
    fatty = muscle & (specks > thr)
    cv.hu[fatty] = p.hu["visceral_fat"] + 25 * tex[fatty]
    fat = body & (cv.hu < -30) & (cv.hu > -300)
    return Rendering(hu=cv.hu, tissue=cv.tissue, muscle=muscle, body=body, fat=fat)


def _intermuscular_planes(cv: Canvas, grid: Grid, group: np.ndarray, mm: float,
                          fat_hu: float) -> None:
    """Fat planes about ``mm`` wide wherever two different muscle groups touch."""
    k = max(1, int(round(mm / grid.spacing)))
    is_muscle = cv.where(st.MUSCLE)
    g = np.where(is_muscle, group, -1)
    # the muscle with the lower group id gives way: a plane on one side only is ``mm`` wide
    plane = is_muscle & (ndimage.maximum_filter(g, size=2 * k + 1) > g)
    cv.paint(plane, fat_hu, st.INTERMUSCULAR_FAT)


def _fasciae(cv: Canvas, grid: Grid, p: Params, body: np.ndarray, skin_depth: np.ndarray,
             fat_t: np.ndarray, aphi: np.ndarray, texture_rng: np.random.Generator) -> None:
    """Scarpa's fascia (in some subjects) and the fibrous septa of the subcutaneous fat."""
    subcut = body & (skin_depth > 1.8) & (skin_depth < fat_t)
    w = 0.5  # mm: a fascia is thinner than a pixel; partial volume makes it faint
    if p.organs["scarpa"]:
        cv.paint(subcut & (np.abs(skin_depth - 0.45 * fat_t) < w) & (aphi < 2.2),
                 p.hu["fascia"], st.SUBCUT_FAT)
    septa = smooth_noise(texture_rng, body.shape, max(6.0 / grid.spacing, 1.0))
    # zero crossings of a field correlated over 6 mm: strands ~w mm wide, ~15 mm apart
    cv.paint(subcut & (np.abs(septa) < w / 6.0),
             p.hu["fascia"], st.SUBCUT_FAT)


def _table(cv: Canvas, grid: Grid, p: Params, body_radius) -> None:
    """The curved CT table under the back, a mattress's thickness below it (it only shows where
    it falls inside the FOV)."""
    x, y = grid.xy()
    y0 = p.body_dy + float(body_radius(np.array(np.pi / 2))) + p.scan["table_gap"]
    curve = y0 + 600 - np.sqrt(np.maximum(600.0 ** 2 - (x - p.body_dx) ** 2, 0))
    cv.paint((y > curve) & (y < curve + 3), 150, st.TABLE)
    cv.paint((y > curve + 14) & (y < curve + 16), 80, st.TABLE)


def _spine(cv: Canvas, grid: Grid, p: Params, vx: float, vy: float, y_back: float) -> None:
    """Vertebral body with cortex, canal, pedicles, laminae, spinous and transverse processes;
    the spinous process stops short of ``y_back``, the posterior surface of the back muscles."""
    sp = p.spine
    a, b = sp["vw"] / 2, sp["vd"] / 2
    box, ratio = blob_ratio(grid, vx, vy, a, b, n=2.3)
    outer = ratio < 1
    x, yy = grid.xy(box)
    # kidney-bean body: the posterior border is concave around the canal
    outer &= ~((np.hypot((x - vx) / (0.5 * a), (yy - vy - 1.3 * b) / (0.5 * b))) < 1)
    inner = outer & (ratio < 1 - sp["cortex"] / b)
    cv.paint(outer, p.hu["cortex"], st.BONE, box)
    cv.paint(inner, p.hu["cancellous"], st.MARROW, box)
    post = np.zeros(cv.hu.shape, bool)
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
    cv.paint(post, 0.55 * p.hu["cortex"] + 0.45 * p.hu["cancellous"], st.BONE)  # thin cortex
    box, canal = blob(grid, vx, cy, cw, cd, n=1.6)
    cv.paint(canal, p.hu["csf"], st.CSF, box)
