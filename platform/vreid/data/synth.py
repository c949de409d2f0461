"""Demo data: small synthetic vehicle datasets in the five official on-disk layouts.

No real dataset can be downloaded here, so the demo runs on drawn vehicles written exactly as the
real releases lay them out (FORMATS.md): VeRi-776, CityFlow-ReID, VehicleID, VeRi-Wild, CompCars.

What makes identity learnable from pixels, and what makes it hard:

* identity: body colour (hues spread over the circle), a stripe (its own colour and height), roof
  colour, and 0-3 dots; these cues are visible in every view;
* "models": a silhouette (sedan / SUV / van / truck / bus and its proportions) shared by about three
  identities, which therefore look alike but differ in colour and markings;
* nuisance: each identity is seen by several cameras; each camera prefers a viewpoint (front, rear,
  left or right side), has its own background, scale and lighting, and every image jitters these;
* source bias: CompCars clean light backgrounds and all viewpoints with a box around the car;
  VehicleID front and rear only, nearly full frame; VeRi-776 / CityFlow / VeRi-Wild street scenes
  (CityFlow blurrier, VeRi-Wild with night-time lighting).

Timestamps (VeRi-776 file names, VeRi-Wild ``vehicle_info.txt``) are consistent per identity: one
identity's sightings lie within minutes, different identities spread over a day.
CityFlow ids follow the real numbering (training 1-95 and 241-478, two thirds of them <= 400, test
ids from 96-240 and 479-666) so the VehicleNet validation split works; the hidden test labels are
written only to ``cityflow/_synth_test_ids.csv``, which the reader never opens.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, source, ...)``: the same seed
gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vreid.errors import ConfigError

SOURCES = ("veri776", "cityflow", "vehicleid", "veriwild", "compcars")
MARKER = "_synth.json"
VIEWS = ("front", "rear", "side_left", "side_right")
KINDS = ("sedan", "suv", "van", "truck", "bus")
COLOR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
_GB2312_NOTE = "合成车辆数据"  # written as real gb2312 bytes so readers exercise the decode path


@dataclass(frozen=True)
class Silhouette:
    """The shape a "model" shares among its identities (proportions relative to vehicle length)."""

    kind: str
    body: float  # body height / length
    cabin: float  # cabin height / length
    cabin_start: float  # cabin span along the body, 0 = rear, 1 = front (side view)
    cabin_end: float
    wheel: float  # wheel radius / length
    front_body: float  # front view: body height / width
    front_cabin: float  # front view: cabin height / width
    cabin_width: float  # front view: cabin width / width


@dataclass(frozen=True)
class Identity:
    vid: int
    model: int
    body: tuple[int, int, int]
    stripe: tuple[int, int, int]
    stripe_pos: int  # 0 high, 1 middle, 2 low
    roof: tuple[int, int, int]
    dots: int
    dot_color: tuple[int, int, int]
    hue: float


def _silhouette(kind: str, rng: np.random.Generator) -> Silhouette:
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    if kind == "sedan":
        return Silhouette(kind, u(.16, .2), u(.13, .17), u(.22, .3), u(.62, .72), u(.085, .1), u(.32, .4), u(.28, .34), u(.7, .78))
    if kind == "suv":
        return Silhouette(kind, u(.22, .27), u(.16, .2), u(.1, .18), u(.7, .8), u(.1, .115), u(.42, .5), u(.34, .4), u(.78, .85))
    if kind == "van":
        return Silhouette(kind, u(.3, .36), u(.16, .2), u(.03, .08), u(.75, .85), u(.08, .095), u(.5, .58), u(.42, .5), u(.88, .94))
    if kind == "truck":
        return Silhouette(kind, u(.2, .25), u(.2, .24), u(.68, .72), u(.9, .95), u(.09, .105), u(.45, .52), u(.45, .52), u(.9, .96))
    return Silhouette(kind, u(.32, .36), u(.2, .24), u(.02, .04), u(.96, .98), u(.075, .085), u(.55, .62), u(.5, .58), u(.94, .98))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _identities(vids: list[int], n_models: int, rng: np.random.Generator) -> list[Identity]:
    """Identities with well-separated hues and independent markings; models shared round-robin."""
    n = len(vids)
    hue_order = rng.permutation(n)
    offset = float(rng.uniform())
    model_of = rng.permutation(np.arange(n) % n_models)
    out = []
    for i, vid in enumerate(vids):
        hue = (offset + hue_order[i] / n) % 1.0
        body = _hsv(hue, rng.uniform(.55, .95), rng.uniform(.55, .95))
        stripe_hue = hue + rng.uniform(.3, .7)
        stripe = _hsv(stripe_hue, rng.uniform(.4, 1.), rng.uniform(.2, 1.))
        roof_choice = int(rng.integers(4))
        roof = [(235, 235, 235), (25, 25, 25), body, stripe][roof_choice]
        dot = _hsv(hue + rng.uniform(.15, .85), .2, float(rng.choice([.1, .95])))
        out.append(Identity(vid, int(model_of[i]), body, stripe, int(rng.integers(3)), roof, int(rng.integers(4)),
                            dot, hue))
    return out


def _shade(c, f):
    return tuple(int(max(0, min(255, v * f))) for v in c)


def _draw_side(d: ImageDraw.ImageDraw, cx: float, ground: float, length: float, s: Silhouette, ident: Identity) -> tuple:
    L = length
    x0, x1 = cx - L / 2, cx + L / 2
    wr = s.wheel * L
    body_bottom = ground - wr * 0.9
    body_top = body_bottom - s.body * L
    cab_h = s.cabin * L
    glass = (45, 55, 75)
    d.ellipse((x0, ground - wr * 0.35, x1, ground + wr * 0.25), fill=(30, 30, 30))  # shadow
    if s.kind == "truck":  # cargo box behind the cab, in the body colour
        d.rectangle((x0, body_top - cab_h * 1.25, x0 + 0.64 * L, body_bottom), fill=_shade(ident.body, 0.9))
    cs, ce = x0 + s.cabin_start * L, x0 + s.cabin_end * L
    slant = (ce - cs) * (0.05 if s.kind in ("van", "bus", "truck") else 0.2)
    top = body_top - cab_h
    d.polygon([(cs, body_top), (cs + slant, top), (ce - slant * 1.3, top), (ce, body_top)], fill=ident.body)
    inset = cab_h * 0.2
    if s.kind == "bus":
        n_win = 6
        w = (ce - cs - 2 * inset) / n_win
        for k in range(n_win):
            d.rectangle((cs + inset + k * w + w * 0.1, top + inset, cs + inset + (k + 1) * w - w * 0.1, body_top - inset * 0.4), fill=glass)
    else:
        d.polygon([(cs + slant + inset, top + inset), (ce - slant * 1.3 - inset, top + inset),
                   (ce - inset * 1.2, body_top - inset * 0.3), (cs + inset * 1.2, body_top - inset * 0.3)], fill=glass)
    d.rectangle((cs + slant, top, ce - slant * 1.3, top + cab_h * 0.18), fill=ident.roof)
    d.rounded_rectangle((x0, body_top, x1, body_bottom), radius=(body_bottom - body_top) * 0.25, fill=ident.body)
    bh = body_bottom - body_top
    sh = bh * 0.26
    ys = body_top + bh * (0.08, 0.38, 0.66)[ident.stripe_pos]
    d.rectangle((x0 + L * 0.01, ys, x1 - L * 0.01, ys + sh), fill=ident.stripe)
    if ident.dots:
        yd = body_top + bh * (0.75 if ident.stripe_pos < 2 else 0.3)
        r = bh * 0.13
        for k in range(ident.dots):
            xd = x0 + L * (0.35 + 0.15 * k)
            d.ellipse((xd - r, yd - r, xd + r, yd + r), fill=ident.dot_color)
    d.rectangle((x1 - L * 0.035, body_top + bh * 0.15, x1, body_top + bh * 0.4), fill=(250, 240, 170))
    d.rectangle((x0, body_top + bh * 0.15, x0 + L * 0.03, body_top + bh * 0.4), fill=(200, 20, 20))
    wheels = (0.17, 0.83) if s.kind not in ("truck", "bus") else (0.14, 0.34, 0.84)
    for f in wheels:
        xw = x0 + f * L
        d.ellipse((xw - wr, ground - 2 * wr, xw + wr, ground), fill=(18, 18, 18))
        d.ellipse((xw - wr * 0.45, ground - wr * 1.45, xw + wr * 0.45, ground - wr * 0.55), fill=(150, 150, 150))
    return x0, min(top, body_top - (cab_h * 1.25 if s.kind == "truck" else 0)), x1, ground


def _draw_end(d: ImageDraw.ImageDraw, cx: float, ground: float, width: float, s: Silhouette, ident: Identity,
              front: bool) -> tuple:
    W = width
    x0, x1 = cx - W / 2, cx + W / 2
    wh = W * 0.12
    body_bottom = ground - wh * 0.6
    body_top = body_bottom - s.front_body * W
    cab_h = s.front_cabin * W
    cw = s.cabin_width * W
    top = body_top - cab_h
    glass = (45, 55, 75)
    d.ellipse((x0 - W * 0.04, ground - wh * 0.5, x1 + W * 0.04, ground + wh * 0.3), fill=(30, 30, 30))
    for xw in (x0 + W * 0.04, x1 - W * 0.18):
        d.rectangle((xw, body_bottom - wh * 0.3, xw + W * 0.14, ground), fill=(18, 18, 18))
    d.polygon([(cx - W * 0.48, body_top), (cx - cw / 2, top), (cx + cw / 2, top), (cx + W * 0.48, body_top)], fill=ident.body)
    inset = cab_h * 0.18
    d.polygon([(cx - cw / 2 + inset, top + inset * 1.3), (cx + cw / 2 - inset, top + inset * 1.3),
               (cx + W * 0.45 - inset, body_top - inset * 0.3), (cx - W * 0.45 + inset, body_top - inset * 0.3)],
              fill=glass if front else _shade(glass, 1.3))
    d.rectangle((cx - cw / 2, top, cx + cw / 2, top + cab_h * 0.16), fill=ident.roof)
    d.rounded_rectangle((x0, body_top, x1, body_bottom), radius=(body_bottom - body_top) * 0.2, fill=ident.body)
    bh = body_bottom - body_top
    ys = body_top + bh * (0.05, 0.4, 0.72)[ident.stripe_pos]
    d.rectangle((x0 + W * 0.01, ys, x1 - W * 0.01, ys + bh * 0.22), fill=ident.stripe)
    light = (250, 240, 170) if front else (210, 20, 20)
    ly = body_top + bh * (0.3 if ident.stripe_pos != 1 else 0.12)
    d.rectangle((x0 + W * 0.04, ly, x0 + W * 0.2, ly + bh * 0.2), fill=light)
    d.rectangle((x1 - W * 0.2, ly, x1 - W * 0.04, ly + bh * 0.2), fill=light)
    if front:
        d.rectangle((cx - W * 0.16, ly, cx + W * 0.16, ly + bh * 0.24), fill=(35, 35, 35))
    d.rectangle((cx - W * 0.1, body_bottom - bh * 0.28, cx + W * 0.1, body_bottom - bh * 0.08), fill=(235, 235, 235))
    if ident.dots:
        r = bh * 0.11
        yd = body_top + bh * (0.75 if ident.stripe_pos < 2 else 0.25)
        for k in range(ident.dots):
            xd = cx + (k - (ident.dots - 1) / 2) * W * 0.14
            if abs(xd - cx) < W * 0.12 and abs(yd - (body_bottom - bh * 0.18)) < bh * 0.15:
                yd -= bh * 0.3  # keep dots off the licence plate
            d.ellipse((xd - r, yd - r, xd + r, yd + r), fill=ident.dot_color)
    return x0 - W * 0.04, top, x1 + W * 0.04, ground


def _background(d: ImageDraw.ImageDraw, w: int, h: int, style: str, cam_rng_vals: dict, rng: np.random.Generator) -> None:
    if style == "clean":
        v = int(rng.integers(225, 256))
        d.rectangle((0, 0, w, h), fill=(v, v, int(v * rng.uniform(.96, 1.0))))
        return
    base = cam_rng_vals["road"]
    road = tuple(int(np.clip(c + rng.integers(-8, 9), 0, 255)) for c in base)
    d.rectangle((0, 0, w, h), fill=road)
    horizon = cam_rng_vals["horizon"] * h
    if horizon > 0:
        d.rectangle((0, 0, w, horizon), fill=cam_rng_vals["wall"])
        for k in range(3):  # building / foliage blocks
            x = rng.uniform(0, w)
            bw = rng.uniform(.1, .3) * w
            d.rectangle((x, horizon * rng.uniform(.1, .6), x + bw, horizon), fill=_shade(cam_rng_vals["wall"], rng.uniform(.7, 1.2)))
    if style == "street":
        lane = (240, 240, 240) if cam_rng_vals["lane_white"] else (230, 190, 40)
        xl = cam_rng_vals["lane_x"] * w
        for k in range(6):
            y = horizon + (k + rng.uniform(0, .4)) * (h - horizon) / 5
            d.rectangle((xl - w * 0.012, y, xl + w * 0.012, y + (h - horizon) / 12), fill=lane)


_SOURCE_STYLE = {
    # background, lighting range, camera scale range, blur radius range (in output pixels)
    "veri776": dict(bg="street", light=(.7, 1.25), scale=(.72, .92), blur=(0, .4)),
    "cityflow": dict(bg="street", light=(.65, 1.2), scale=(.68, .9), blur=(.4, .9)),
    "vehicleid": dict(bg="road", light=(.75, 1.2), scale=(.85, .96), blur=(0, .3)),
    "veriwild": dict(bg="street", light=(.45, 1.2), scale=(.7, .92), blur=(0, .5)),
    "compcars": dict(bg="clean", light=(.9, 1.1), scale=(.55, .8), blur=(0, .2)),
}


def _camera(rng: np.random.Generator, source: str) -> dict:
    views = ("front", "rear") if source == "vehicleid" else VIEWS
    style = _SOURCE_STYLE[source]
    g = float(rng.uniform(60, 140))
    return {
        "view": views[int(rng.integers(len(views)))],
        "scale": float(rng.uniform(*style["scale"])),
        "light": float(rng.uniform(*style["light"])),
        "cast": rng.uniform(.92, 1.08, size=3),
        "road": (g, g * rng.uniform(.95, 1.05), g * rng.uniform(.95, 1.1)),
        "wall": _hsv(rng.uniform(), rng.uniform(0, .35), rng.uniform(.3, .8)),
        "horizon": float(rng.uniform(0, .3)) if source != "vehicleid" else 0.0,
        "lane_white": bool(rng.integers(2)),
        "lane_x": float(rng.choice([rng.uniform(.02, .15), rng.uniform(.85, .98)])),
    }


def render(ident: Identity, sil: Silhouette, view: str, size: tuple[int, int], scale: float, light: float,
           cast: np.ndarray, cam: dict, style: dict, rng: np.random.Generator) -> tuple[Image.Image, list[int]]:
    """Draw one vehicle image; returns the image and the vehicle box ``[x1, y1, x2, y2]`` (0-based, end-exclusive)."""
    w, h = size
    ss = 2  # draw at twice the size, then downsample, for anti-aliased edges
    W, H = w * ss, h * ss
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    _background(d, W, H, style["bg"], cam, rng)
    cx = W / 2 + rng.uniform(-.05, .05) * W
    if view.startswith("side"):
        length = scale * W
        height = length * (sil.body + sil.cabin * (1.25 if sil.kind == "truck" else 1) + sil.wheel * 1.9)
        if height > 0.92 * H:
            length *= 0.92 * H / height
            height = 0.92 * H
        ground = H / 2 + height / 2 + rng.uniform(-.03, .03) * H
        box = _draw_side(d, cx, ground, length, sil, ident)
        if view == "side_left":
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = (W - box[2], box[1], W - box[0], box[3])
    else:
        width = scale * min(W, H * 1.1) * 0.9
        height = width * (sil.front_body + sil.front_cabin + 0.08)
        if height > 0.92 * H:
            width *= 0.92 * H / height
            height = 0.92 * H
        ground = H / 2 + height / 2 + rng.uniform(-.03, .03) * H
        box = _draw_end(d, cx, ground, width, sil, ident, front=(view == "front"))
    img = img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    blur = rng.uniform(*style["blur"])
    if blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32) * (light * cast)[None, None, :]
    arr += rng.normal(0, 3.0, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    x1, y1 = max(0, int(np.floor(box[0] / ss))), max(0, int(np.floor(box[1] / ss)))
    x2, y2 = min(w, int(np.ceil(box[2] / ss))), min(h, int(np.ceil(box[3] / ss)))
    return img, [x1, y1, x2, y2]


@dataclass
class _Shot:
    ident: Identity
    camera: int
    order: int  # index of this image among the identity's images
    view: str
    img: Image.Image
    box: list[int]


def _shoot(source: str, src_idx: int, seed: int, idents: list[Identity], sils: list[Silhouette],
           cameras: dict[int, dict], cams_of: dict[int, list[int]], images_per_id: int,
           size_range=(64, 96)) -> list[_Shot]:
    style = _SOURCE_STYLE[source]
    views = ("front", "rear") if source == "vehicleid" else VIEWS
    shots = []
    for i, ident in enumerate(idents):
        cams = cams_of[ident.vid]
        for j in range(images_per_id):
            rng = np.random.default_rng([seed, src_idx, 7, i, j])
            cam_id = cams[j % len(cams)]
            cam = cameras[cam_id]
            view = cam["view"] if rng.uniform() < 0.7 else views[int(rng.integers(len(views)))]
            lo, hi = size_range
            mid = (lo + hi) // 2
            if view.startswith("side"):  # side views are wider than tall, as detector crops are
                size = (int(rng.integers(mid, hi + 1)), int(rng.integers(lo, mid + 1)))
            else:
                size = (int(rng.integers(lo, mid + (hi - lo) // 4 + 1)), int(rng.integers(lo, mid + (hi - lo) // 4 + 1)))
            img, box = render(ident, sils[ident.model], view, size, cam["scale"] * rng.uniform(.92, 1.05),
                              cam["light"] * rng.uniform(.9, 1.1), cam["cast"], cam, style, rng)
            shots.append(_Shot(ident, cam_id, j, view, img, box))
    return shots


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def _gb2312_xml(root_tag: str, items: list[dict]) -> bytes:
    lines = ['<?xml version="1.0" encoding="gb2312"?>', f"<!-- {_GB2312_NOTE}: vreid synthetic labels -->",
             f'<{root_tag} Version="1.0">', f'<Items number="{len(items)}" note="{_GB2312_NOTE}">']
    for it in items:
        attrs = " ".join(f'{k}="{v}"' for k, v in it.items())
        lines.append(f"<Item {attrs} />")
    lines += ["</Items>", f"</{root_tag}>", ""]
    return "\n".join(lines).encode("gb2312")


def _setup(source: str, src_idx: int, seed: int, vids: list[int], n_cameras_pool: list[int],
           cams_per_id: tuple[int, int]) -> tuple[list[Identity], list[Silhouette], dict, dict]:
    rng = np.random.default_rng([seed, src_idx, 1])
    n_models = max(2, len(vids) // 3)
    sils = [_silhouette(KINDS[int(rng.integers(len(KINDS)))], rng) for _ in range(n_models)]
    idents = _identities(vids, n_models, rng)
    cameras = {c: _camera(np.random.default_rng([seed, src_idx, 2, c]), source) for c in n_cameras_pool}
    cams_of = {}
    for ident in idents:
        k = int(rng.integers(cams_per_id[0], cams_per_id[1] + 1))
        k = min(k, len(n_cameras_pool))
        cams_of[ident.vid] = sorted(int(c) for c in rng.choice(n_cameras_pool, size=k, replace=False))
    return idents, sils, cameras, cams_of


def _split_ids(vids: list[int], rng: np.random.Generator, frac_train: float = 2 / 3) -> tuple[list[int], list[int]]:
    perm = [vids[i] for i in rng.permutation(len(vids))]
    n_train = max(1, int(round(frac_train * len(vids))))
    return sorted(perm[:n_train]), sorted(perm[n_train:])


def _veri776(out: Path, seed: int, n_ids: int, per_id: int, size: tuple[int, int]) -> None:
    src = SOURCES.index("veri776")
    rng = np.random.default_rng([seed, src, 0])
    vids = sorted(int(v) for v in rng.choice(np.arange(1, 777), size=n_ids, replace=False))
    train_ids, test_ids = _split_ids(vids, rng)
    idents, sils, cameras, cams_of = _setup("veri776", src, seed, vids, list(range(1, 21)), (3, 5))
    t0 = {v: int(rng.integers(1000, 80000)) * 10 for v in vids}  # frame stamps: one identity within minutes
    shots = _shoot("veri776", src, seed, idents, sils, cameras, cams_of, per_id, size)
    lists = {"train": [], "test": [], "query": []}
    items = {"train": [], "test": []}
    counters: dict[tuple[int, int], int] = {}
    queried: set[tuple[int, int]] = set()
    color_of = lambda ident: 1 + int(ident.hue * len(COLOR_NAMES)) % len(COLOR_NAMES)  # noqa: E731
    for shot in shots:
        vid, cam = shot.ident.vid, shot.camera
        k = counters.get((vid, cam), 0)
        counters[(vid, cam)] = k + 1
        stamp = t0[vid] + cams_of[vid].index(cam) * 600 + shot.order * 7
        name = f"{vid:04d}_c{cam:03d}_{stamp:08d}_{k}.jpg"
        part = "train" if vid in train_ids else "test"
        _save(shot.img, out / f"image_{part}" / name)
        lists[part].append(name)
        items[part].append({"imageName": name, "vehicleID": f"{vid:04d}", "cameraID": f"c{cam:03d}",
                            "colorID": color_of(shot.ident), "typeID": 1 + KINDS.index(sils[shot.ident.model].kind)})
        if part == "test" and (vid, cam) not in queried:  # one query per (id, camera), a copy of a test image
            queried.add((vid, cam))
            _save(shot.img, out / "image_query" / name)
            lists["query"].append(name)
    for part, list_name in (("train", "name_train.txt"), ("query", "name_query.txt"), ("test", "name_test.txt")):
        (out / list_name).write_text("".join(n + "\n" for n in sorted(lists[part])))
    for part in ("train", "test"):
        (out / f"{part}_label.xml").write_bytes(
            _gb2312_xml("TrainingImages" if part == "train" else "TestImages", sorted(items[part], key=lambda r: r["imageName"])))
    # gt / junk lists per query (same id other camera / same id same camera), as the release ships them
    gt, jk = [], []
    for q in sorted(lists["query"]):
        qv, qc = q.split("_")[0], q.split("_")[1]
        gt.append(" ".join(n for n in sorted(lists["test"]) if n.split("_")[0] == qv and n.split("_")[1] != qc))
        jk.append(" ".join(n for n in sorted(lists["test"]) if n.split("_")[0] == qv and n.split("_")[1] == qc))
    (out / "gt_image.txt").write_text("".join(l + "\n" for l in gt))
    (out / "jk_image.txt").write_text("".join(l + "\n" for l in jk))


def _cityflow(out: Path, seed: int, n_ids: int, per_id: int, size: tuple[int, int]) -> None:
    src = SOURCES.index("cityflow")
    rng = np.random.default_rng([seed, src, 0])
    n_train = max(2, int(round(2 * n_ids / 3)))
    n_val = max(1, int(round(n_train / 3)))  # ids 401-478: the VehicleNet validation ids
    low_pool = np.concatenate([np.arange(1, 96), np.arange(241, 401)])
    train_ids = sorted([int(v) for v in rng.choice(low_pool, size=n_train - n_val, replace=False)]
                       + [int(v) for v in rng.choice(np.arange(401, 479), size=n_val, replace=False)])
    test_pool = np.concatenate([np.arange(96, 241), np.arange(479, 667)])
    # as many test ids as training ids (the release: 333 / 333), so the AI City test gallery of the
    # default demo holds more than the 100 entries a track2.txt line needs
    test_ids = sorted(int(v) for v in rng.choice(test_pool, size=n_train, replace=False))
    vids = sorted(train_ids + test_ids)
    idents, sils, cameras, cams_of = _setup("cityflow", src, seed, vids, list(range(1, 41)), (3, 4))
    shots = _shoot("cityflow", src, seed, idents, sils, cameras, cams_of, per_id, size)
    train = sorted((s for s in shots if s.ident.vid in train_ids), key=lambda s: (s.ident.vid, s.camera, s.order))
    test = [s for s in shots if s.ident.vid in test_ids]
    items, train_names, train_tracks = [], [], {}
    for n, shot in enumerate(train, start=1):
        name = f"{n:06d}.jpg"
        _save(shot.img, out / "image_train" / name)
        train_names.append(name)
        items.append({"imageName": name, "vehicleID": f"{shot.ident.vid:04d}", "cameraID": f"c{shot.camera:03d}"})
        train_tracks.setdefault((shot.ident.vid, shot.camera), []).append(name)
    # test: per (id, camera) the first image is a query for at most two cameras per id, the rest gallery
    query, gallery = [], []
    seen_q: dict[int, int] = {}
    done: set[tuple[int, int]] = set()
    for shot in sorted(test, key=lambda s: (s.ident.vid, s.camera, s.order)):
        key = (shot.ident.vid, shot.camera)
        if key not in done and seen_q.get(shot.ident.vid, 0) < 2:
            done.add(key)
            seen_q[shot.ident.vid] = seen_q.get(shot.ident.vid, 0) + 1
            query.append(shot)
        else:
            gallery.append(shot)
    query = [query[i] for i in rng.permutation(len(query))]
    gallery = [gallery[i] for i in rng.permutation(len(gallery))]
    hidden = ["split,image_name,vehicle_id,camera"]
    test_tracks: dict[tuple[int, int], list[str]] = {}
    for part, folder, shots_ in (("query", "image_query", query), ("gallery", "image_test", gallery)):
        names = []
        for n, shot in enumerate(shots_, start=1):
            name = f"{n:06d}.jpg"
            _save(shot.img, out / folder / name)
            names.append(name)
            hidden.append(f"{part},{name},{shot.ident.vid},{shot.camera}")
            if part == "gallery":
                test_tracks.setdefault((shot.ident.vid, shot.camera), []).append(name)
        (out / ("name_query.txt" if part == "query" else "name_test.txt")).write_text("".join(n + "\n" for n in names))
    (out / "name_train.txt").write_text("".join(n + "\n" for n in train_names))
    (out / "train_label.xml").write_bytes(_gb2312_xml("TrainingImages", items))
    # one track a line, names separated by spaces, with the trailing space the release has
    for file_name, tracks in (("train_track.txt", train_tracks), ("test_track.txt", test_tracks)):
        (out / file_name).write_text("".join(" ".join(sorted(v)) + " \n" for _, v in sorted(tracks.items())))
    (out / "_synth_test_ids.csv").write_text("\n".join(hidden) + "\n")


def _vehicleid(out: Path, seed: int, n_ids: int, per_id: int, size: tuple[int, int]) -> None:
    src = SOURCES.index("vehicleid")
    rng = np.random.default_rng([seed, src, 0])
    vids = sorted(int(v) for v in rng.choice(np.arange(0, 26328), size=n_ids, replace=False))
    train_ids, test_ids = _split_ids(vids, rng, 0.5)
    # VehicleID has two (unnamed) cameras, each seeing the front or the rear
    idents, sils, cameras, cams_of = _setup("vehicleid", src, seed, vids, [1, 2], (2, 2))
    cameras[1]["view"], cameras[2]["view"] = "front", "rear"
    shots = _shoot("vehicleid", src, seed, idents, sils, cameras, cams_of, per_id, size)
    order = rng.permutation(len(shots))
    lines: dict[int, list[str]] = {}
    for n, idx in enumerate(order, start=1):
        shot = shots[idx]
        name = f"{n:07d}"
        _save(shot.img, out / "image" / f"{name}.jpg")
        lines.setdefault(shot.ident.vid, []).append(f"{name} {shot.ident.vid}")
    split_dir = out / "train_test_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train_list.txt").write_text("".join(l + "\n" for v in train_ids for l in lines[v]))
    shuffled = [test_ids[i] for i in rng.permutation(len(test_ids))]
    nt = len(shuffled)
    for file_name, k in (("test_list_800.txt", -(-nt // 3)), ("test_list_1600.txt", -(-2 * nt // 3)),
                         ("test_list_2400.txt", nt), ("test_list_13164.txt", nt)):
        chosen = sorted(shuffled[:k])
        (split_dir / file_name).write_text("".join(l + "\n" for v in chosen for l in lines[v]))
    attr = out / "attribute"
    attr.mkdir(parents=True, exist_ok=True)
    with_attr = [i for i in idents if rng.uniform() < 0.7]  # the release labels only part of the ids
    (attr / "model_attr.txt").write_text("".join(f"{i.vid} {i.model}\n" for i in with_attr))
    (attr / "color_attr.txt").write_text("".join(f"{i.vid} {int(i.hue * len(COLOR_NAMES)) % len(COLOR_NAMES)}\n" for i in with_attr))


def _veriwild(out: Path, seed: int, n_ids: int, per_id: int, size: tuple[int, int]) -> None:
    src = SOURCES.index("veriwild")
    rng = np.random.default_rng([seed, src, 0])
    vids = sorted(int(v) for v in rng.choice(np.arange(1, 40672), size=n_ids, replace=False))
    train_ids, test_ids = _split_ids(vids, rng, 0.5)
    idents, sils, cameras, cams_of = _setup("veriwild", src, seed, vids, list(range(1, 175)), (3, 5))
    shots = _shoot("veriwild", src, seed, idents, sils, cameras, cams_of, per_id, size)
    epoch = _dt.datetime(2018, 3, 11, 0, 0, 0)
    t0 = {v: int(rng.integers(0, 20 * 3600)) for v in vids}
    info = ["id/image;Camera ID;Time;Model;Type;Color"]
    by_id: dict[int, list[tuple[str, int]]] = {}
    order = rng.permutation(len(shots))
    for n, idx in enumerate(order, start=1):
        shot = shots[idx]
        vid = shot.ident.vid
        name = f"{vid:05d}/{n:06d}"
        _save(shot.img, out / "images" / f"{name}.jpg")
        when = epoch + _dt.timedelta(seconds=t0[vid] + cams_of[vid].index(shot.camera) * 240 + shot.order * 3)
        kind = sils[shot.ident.model].kind
        info.append(f"{name};{shot.camera};{when:%Y-%m-%d %H:%M:%S};Make{shot.ident.model % 4} Model{shot.ident.model};"
                    f"{kind};{COLOR_NAMES[int(shot.ident.hue * len(COLOR_NAMES)) % len(COLOR_NAMES)]}")
        by_id.setdefault(vid, []).append((name, shot.camera))
    split_dir = out / "train_test_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "vehicle_info.txt").write_text("\n".join(info) + "\n")
    (split_dir / "train_list.txt").write_text("".join(n + "\n" for v in train_ids for n, _ in sorted(by_id[v])))
    shuffled = [test_ids[i] for i in rng.permutation(len(test_ids))]
    nt = len(shuffled)
    query_of = {v: sorted(by_id[v])[int(rng.integers(len(by_id[v])))][0] for v in test_ids}
    for size, k in ((3000, -(-nt // 3)), (5000, -(-2 * nt // 3)), (10000, nt)):
        chosen = sorted(shuffled[:k])
        (split_dir / f"test_{size}_query.txt").write_text("".join(query_of[v] + "\n" for v in chosen))
        (split_dir / f"test_{size}.txt").write_text(
            "".join(n + "\n" for v in chosen for n, _ in sorted(by_id[v]) if n != query_of[v]))


def _compcars(out: Path, seed: int, n_ids: int, per_id: int, size: tuple[int, int]) -> None:
    src = SOURCES.index("compcars")
    rng = np.random.default_rng([seed, src, 0])
    # classes are (model, released year): about three years per model, models under a few makes
    n_models = max(2, n_ids // 3)
    model_ids = sorted(int(v) for v in rng.choice(np.arange(1, 2005), size=n_models, replace=False))
    make_of = {m: int(rng.integers(1, 164)) for m in model_ids}
    classes = []
    for k in range(n_ids):
        m = model_ids[k % n_models]
        classes.append((make_of[m], m, 2005 + (k // n_models) * 2 + int(rng.integers(2))))
    vids = list(range(n_ids))
    idents, sils, cameras, cams_of = _setup("compcars", src, seed, vids, list(range(1, 9)), (4, 6))
    # CompCars' model is the silhouette: identities of one model share it
    idents = [Identity(i.vid, k % n_models % len(sils), i.body, i.stripe, i.stripe_pos, i.roof, i.dots, i.dot_color, i.hue)
              for k, i in enumerate(idents)]
    shots = _shoot("compcars", src, seed, idents, sils, cameras, cams_of, per_id, size)
    n_bad = max(1, len(shots) // 150)
    bad = set(int(i) for i in rng.choice(len(shots), size=n_bad, replace=False))
    data = out / "data"
    view_code = {"front": 1, "rear": 2, "side_left": 3, "side_right": 3}
    train, test = [], []
    for n, shot in enumerate(shots):
        make, model, year = classes[shot.ident.vid]
        rel = f"{make}/{model}/{year}/{rng.bytes(7).hex()}.jpg"
        _save(shot.img, data / "image" / rel)
        x1, y1, x2, y2 = shot.box  # 0-based exclusive -> CompCars' 1-based inclusive
        box = (x1 + 1, y1 + 1, x2, y2) if n not in bad else (x2, y1 + 1, x1 + 1, y2)  # a degenerate box
        viewpoint = view_code[shot.view] if rng.uniform() > 0.05 else -1
        label = data / "label" / Path(rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(f"{viewpoint}\n1\n{box[0]} {box[1]} {box[2]} {box[3]}\n")
        (test if shot.order % 4 == 3 else train).append(rel)
    split_dir = data / "train_test_split" / "classification"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "train.txt").write_text("".join(r + "\n" for r in sorted(train)))
    (split_dir / "test.txt").write_text("".join(r + "\n" for r in sorted(test)))


_WRITERS = {"veri776": _veri776, "cityflow": _cityflow, "vehicleid": _vehicleid, "veriwild": _veriwild,
            "compcars": _compcars}


def synthesize(out_dir: str | os.PathLike, seed: int = 0, ids: int = 30, images_per_id: int = 8,
               size: tuple[int, int] = (64, 96), sources: tuple[str, ...] = SOURCES) -> dict[str, Path]:
    """Write synthetic datasets ``out_dir/<source>`` in each official layout; returns ``{source: root}``.

    ``ids`` identities per source (CompCars: model x year classes), ``images_per_id`` images each;
    ``size`` is the range of image sides in pixels. A source folder is rebuilt in a temporary folder
    and renamed into place; an existing folder is replaced only if it was made by this function.
    """
    if ids < 3 or images_per_id < 2:
        raise ConfigError(f"synthesize: need ids >= 3 and images_per_id >= 2, got ids={ids} images_per_id={images_per_id}")
    if seed < 0:
        raise ConfigError(f"synthesize: seed must be >= 0, got {seed}")
    if len(size) != 2 or not (16 <= size[0] <= size[1] <= 512):
        raise ConfigError(f"synthesize: size must be (min, max) pixels with 16 <= min <= max <= 512, got {size}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ConfigError(f"synthesize: unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = {}
    for source in sources:
        final = out_dir / source
        if final.exists() and not (final / MARKER).is_file():
            raise ConfigError(f"{final}: exists and was not written by vreid synth; refusing to overwrite it")
    for source in sources:
        final = out_dir / source
        tmp = out_dir / f".{source}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _WRITERS[source](tmp, seed, ids, images_per_id, tuple(size))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / MARKER).write_text(json.dumps({"source": source, "seed": seed, "ids": ids,
                                              "images_per_id": images_per_id, "size": list(size)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        roots[source] = final
    return roots
