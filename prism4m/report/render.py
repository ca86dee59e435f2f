"""One member of one modality → what a person looks at (an image and/or a bit of HTML).

`RENDERERS` maps a folder name to a small function; adding a modality is one entry. Folders
not in the table fall back on the member's file type (`GENERIC`; the modalities of
prism4m.contract.modalities shown that way on purpose are `GENERIC_FOLDERS`), token folders
(`tok_*`) share one renderer. Renderers receive the sample's rgb image and crop rows so labels
can be drawn where they belong (boxes, poses, instances, crops).
"""

from __future__ import annotations

import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prism4m.contract.members import decode_npy
from prism4m.modality.specs import feature_grid
from prism4m.report.colors import COCO_SKELETON, class_color, class_palette, coco_panoptic_names, colormap


@dataclass
class SampleContext:
    key: str
    rgb: Image.Image | None = None          # the ingested RGB image
    crops: np.ndarray | None = None         # crop_settings rows (top, left, h, w, hflip)


@dataclass
class Panel:
    image: Image.Image | None = None
    html: str = ""                          # already-escaped HTML shown under the image
    invalid: bool = False                   # zero-byte member: the sample's label failed
    meta: dict = field(default_factory=dict)


Renderer = Callable[[bytes, SampleContext], Panel]
esc = html.escape


def font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _base(ctx: SampleContext, fallback_hw=(256, 256)) -> Image.Image:
    """The rgb image to draw on (a grey canvas when the sample has none)."""
    if ctx.rgb is not None:
        return ctx.rgb.convert("RGB").copy()
    return Image.new("RGB", (fallback_hw[1], fallback_hw[0]), (90, 90, 90))


def _label(draw: ImageDraw.ImageDraw, xy, text: str, color) -> None:
    f = font(11)
    x, y = xy
    box = draw.textbbox((x, y), text, font=f)
    draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=color)
    draw.text((x, y), text, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255), font=f)


def _table(d: dict, fmt=lambda v: v) -> str:
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(fmt(v)))}</td></tr>" for k, v in d.items())
    return f"<table class='kv'>{rows}</table>"


def _num(v):
    return f"{v:.4g}" if isinstance(v, float) else v


# ----------------------------------------------------------------------------- rasters
def render_rgb(data: bytes, ctx: SampleContext) -> Panel:
    img = _open(data).convert("RGB")
    return Panel(img, f"{img.width}×{img.height}")


def render_edges(data: bytes, ctx: SampleContext) -> Panel:
    img = _open(data).convert("L")
    share = float((np.asarray(img) > 127).mean())
    return Panel(img, f"edge pixels {share:.1%}")


def render_depth(data: bytes, ctx: SampleContext) -> Panel:
    img = _open(data)
    v = np.asarray(img).astype(np.float64)
    info = {}
    try:
        info = json.loads(img.text.get("prism4m", "{}"))  # the depth labeler's conventions chunk
    except (AttributeError, ValueError):
        pass
    farther_is_larger = info.get("larger", "farther") == "farther"
    shown = -v if farther_is_larger else v  # people read depth maps with near = bright
    rgb = Image.fromarray(colormap(shown))
    return Panel(rgb, f"bright = near; stored larger = {esc(info.get('larger', 'farther'))}, "
                      f"range {int(v.min())}..{int(v.max())}")


def render_normal(data: bytes, ctx: SampleContext) -> Panel:
    return Panel(_open(data).convert("RGB"), "RGB = (x, y, z) mapped from [-1, 1]")


def render_semseg(data: bytes, ctx: SampleContext) -> Panel:
    ids = np.asarray(_open(data))
    lut = class_palette(256)
    lut[255] = (0, 0, 0)  # no class
    color = lut[ids]
    if ctx.rgb is not None and ctx.rgb.size == (ids.shape[1], ids.shape[0]):
        color = (0.65 * color + 0.35 * np.asarray(ctx.rgb.convert("RGB"))).astype(np.uint8)
    names = coco_panoptic_names()
    uniq, counts = np.unique(ids, return_counts=True)
    order = np.argsort(-counts)
    items = []
    for i in order[:12]:
        c, share = int(uniq[i]), counts[i] / ids.size
        name = "no class" if c == 255 else (names[c] if c < len(names) else f"class {c}")
        r, g, b = (0, 0, 0) if c == 255 else class_color(c)
        items.append(f"<span class='sw' style='background:rgb({r},{g},{b})'></span>{esc(name)} {share:.0%}")
    more = f" (+{len(order) - 12} more)" if len(order) > 12 else ""
    return Panel(Image.fromarray(color), "<br>".join(items) + more)


# ----------------------------------------------------------------------------- overlays on rgb
def render_crops(data: bytes, ctx: SampleContext) -> Panel:
    rows = decode_npy(data)
    img = _base(ctx)
    draw = ImageDraw.Draw(img)
    for i, (top, left, h, w, flip) in enumerate(rows.tolist()):
        c = class_color(i)
        draw.rectangle((left, top, left + w - 1, top + h - 1), outline=c, width=3 if i == 0 else 2)
        _label(draw, (left + 3, top + 3), f"{i}{' flip' if flip else ''}", c)
    return Panel(img, f"{len(rows)} crops (row 0 = centre square)")


def render_det(data: bytes, ctx: SampleContext) -> Panel:
    inst = json.loads(data).get("instances", [])
    img = _base(ctx)
    W, H = img.size
    draw = ImageDraw.Draw(img)
    names = coco_panoptic_names()
    for d in inst:
        x0, y0, x1, y1 = d["boxes"]
        name = d.get("class_name", "?")
        c = class_color(names.index(name) if name in names else hash(name) % 97)
        draw.rectangle((x0 * W, y0 * H, x1 * W, y1 * H), outline=c, width=2)
        _label(draw, (x0 * W + 2, y0 * H + 2), f"{name} {d.get('score', 0):.2f}", c)
    return Panel(img, f"{len(inst)} boxes: " + esc(", ".join(d.get("class_name", "?") for d in inst[:8])))


def render_instance_tokens(rec: dict, ctx: SampleContext) -> Panel:
    """A sam_instance@<size> token member: crop 0's instance boxes (crop pixels, [ymin, xmin,
    ymax, xmax]) drawn where that crop lies on the rgb image."""
    crops = rec.get("crops", [])
    img = _base(ctx)
    if not crops:
        return Panel(img, "no crops")
    crop, size = crops[0], float(rec.get("crop_size", 224))
    top, left, h, w, flip = (int(v) for v in crop["crop"])
    draw = ImageDraw.Draw(img)
    draw.rectangle((left, top, left + w, top + h), outline=(255, 255, 255), width=1)
    for i, (ymin, xmin, ymax, xmax) in enumerate(crop.get("bbox", [])):
        if flip:  # boxes are in the flipped crop: mirror them back onto the image
            xmin, xmax = size - xmax, size - xmin
        box = (left + xmin / size * w, top + ymin / size * h, left + xmax / size * w, top + ymax / size * h)
        draw.rectangle(box, outline=class_color(i), width=2)
    n_tokens = rec.get("tokens_per_instance", "?")
    return Panel(img, f"{len(crop.get('bbox', []))} instances in crop 0 ({n_tokens} tokens each), "
                      f"{len(crops)} crops")


def render_sam_instance(data: bytes, ctx: SampleContext) -> Panel:
    rec = json.loads(data)
    if "crops" in rec:  # the tokenize stage's member (sam_instance@224), not the RLE label
        return render_instance_tokens(rec, ctx)
    inst = rec.get("instances", [])
    img = _base(ctx, (rec.get("height", 256), rec.get("width", 256)))
    arr = np.asarray(img).astype(np.float64)
    try:
        from pycocotools import mask as mask_util
    except ImportError:  # boxes only
        mask_util = None
    draw_boxes = []
    for i, d in enumerate(inst):
        c = np.array(class_color(i), dtype=np.float64)
        if mask_util is not None:
            seg = dict(d["segmentation"])
            seg["counts"] = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
            m = mask_util.decode(seg).astype(bool)
            if m.shape == arr.shape[:2]:
                arr[m] = 0.45 * arr[m] + 0.55 * c
        draw_boxes.append((d["bbox"], tuple(int(x) for x in c)))
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), c in draw_boxes:
        draw.rectangle((x, y, x + w, y + h), outline=c, width=1)
    return Panel(img, f"{len(inst)} instances")


#: keypoints scoring below this are not drawn: the model puts them off-frame or occluded
#: (VitPose's heatmap peak and BlazePose's visibility are both ~0..1)
POSE_MIN_SCORE = 0.3


def render_poses(data: bytes, ctx: SampleContext) -> Panel:
    persons = json.loads(data).get("persons", []) if data.strip() else []
    img = _base(ctx)
    draw = ImageDraw.Draw(img)
    for i, p in enumerate(persons):
        c = class_color(i)
        if "bbox_xyxy" in p:
            draw.rectangle(tuple(p["bbox_xyxy"]), outline=c, width=1)
        kp = p.get("keypoints", [])
        shown = [len(k) < 3 or k[2] >= POSE_MIN_SCORE for k in kp]
        for a, b in COCO_SKELETON:
            if a < len(kp) and b < len(kp) and shown[a] and shown[b]:
                draw.line((kp[a][0], kp[a][1], kp[b][0], kp[b][1]), fill=c, width=2)
        for (x, y, *_), s in zip(kp, shown):
            if s:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 255, 255), outline=c)
    return Panel(img, f"{len(persons)} person(s)")


# ----------------------------------------------------------------------------- text and numbers
def render_caption(data: bytes, ctx: SampleContext) -> Panel:
    text = data.decode("utf-8", "replace")
    try:  # 4M also accepts a JSON list of captions (one per crop)
        val = json.loads(text)
        if isinstance(val, list):
            text = " | ".join(v["caption"] if isinstance(v, dict) else str(v) for v in val)
    except ValueError:
        pass
    return Panel(None, f"<p class='caption'>“{esc(text)}”</p>")


def render_palette(data: bytes, ctx: SampleContext) -> Panel:
    val = json.loads(data)
    pal = val[0] if isinstance(val, list) else val
    rows = []
    for k in sorted(pal, key=int):
        sw = "".join(f"<span class='sw big' title='{r},{g},{b}' style='background:rgb({r},{g},{b})'></span>"
                     for r, g, b in pal[k])
        rows.append(f"<div class='pal'><span class='k'>{esc(k)}</span>{sw}</div>")
    return Panel(None, "".join(rows))


def render_source(data: bytes, ctx: SampleContext) -> Panel:
    s = json.loads(data)
    uri = str(s.get("uri", "?"))
    row = {"uri": ("…" + uri[-40:]) if len(uri) > 41 else uri,
           "original": f"{s.get('original_width', '?')}×{s.get('original_height', '?')} {s.get('format', '')}",
           "duplicates": len(s.get("duplicates") or []), "sha256": str(s.get("sha256", ""))[:12]}
    if s.get("member"):
        row["member"] = s["member"]
    return Panel(None, _table(row))


def render_metadata(data: bytes, ctx: SampleContext) -> Panel:
    return Panel(None, _table(json.loads(data), _num))


def render_features(data: bytes, ctx: SampleContext) -> Panel:
    """(1 + h·w, C) features: the patch map's first 3 principal components as RGB. The map
    covers the centred square (the labelers' default fit), factorised as the tokenizers do."""
    arr = decode_npy(data).astype(np.float64)
    glob, patches = arr[0], arr[1:]
    h, w = feature_grid(len(patches), (1, 1))
    x = patches - patches.mean(0)
    try:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        pcs = x @ vt[:3].T
    except np.linalg.LinAlgError:
        pcs = np.zeros((len(x), 3))
    if pcs.shape[1] < 3:
        pcs = np.pad(pcs, ((0, 0), (0, 3 - pcs.shape[1])))
    lo, hi = pcs.min(0), pcs.max(0)
    rgb = ((pcs - lo) / np.where(hi > lo, hi - lo, 1) * 255).reshape(h, w, 3).astype(np.uint8)
    img = Image.fromarray(rgb).resize((max(w * 12, 96), max(h * 12, 96)), Image.NEAREST)
    return Panel(img, f"{h}×{w} patches × {arr.shape[1]} ch; PCA→RGB; ‖global‖ = {np.linalg.norm(glob):.3g}")


def render_tokens(data: bytes, ctx: SampleContext) -> Panel:
    ids = decode_npy(data)
    row = ids[0] if ids.ndim == 2 else ids.reshape(-1)
    side = int(math.isqrt(len(row)))  # a square grid of tokens is shown as an image
    h, w = side, side
    img = None
    if side > 1 and side * side == len(row):
        img = Image.fromarray(class_palette(4096)[row.astype(np.int64) % 4096].reshape(h, w, 3))
        img = img.resize((max(w * 10, 96), max(h * 10, 96)), Image.NEAREST)
    return Panel(img, f"{esc(str(ids.dtype))} {'×'.join(map(str, ids.shape))}; ids {int(ids.min())}..{int(ids.max())}"
                      f"; crop 0: {esc(' '.join(map(str, row[:12].tolist())))}{' …' if len(row) > 12 else ''}")


# ----------------------------------------------------------------------------- generic by file type
def render_image_generic(data: bytes, ctx: SampleContext) -> Panel:
    img = _open(data)
    if img.mode in ("I;16", "I", "F"):
        return Panel(Image.fromarray(colormap(np.asarray(img).astype(np.float64))), f"{img.mode} (colormapped)")
    return Panel(img.convert("RGB") if img.mode not in ("L", "RGB") else img, f"{img.mode} {img.width}×{img.height}")


def render_json_generic(data: bytes, ctx: SampleContext) -> Panel:
    val = json.loads(data)
    if isinstance(val, dict) and all(not isinstance(v, (dict, list)) for v in val.values()):
        return Panel(None, _table(val, _num))
    text = json.dumps(val, indent=1)
    return Panel(None, f"<pre>{esc(text[:1200])}{' …' if len(text) > 1200 else ''}</pre>")


def render_text_generic(data: bytes, ctx: SampleContext) -> Panel:
    text = data.decode("utf-8", "replace")
    return Panel(None, f"<pre>{esc(text[:1200])}</pre>")


def render_npy_generic(data: bytes, ctx: SampleContext) -> Panel:
    arr = decode_npy(data)
    img = None
    if arr.ndim == 2 and arr.dtype.kind in "fiu" and min(arr.shape) > 1:
        img = Image.fromarray(colormap(arr.astype(np.float64))).resize((256, 256), Image.NEAREST)
    stats = f"min {arr.min():.4g} max {arr.max():.4g}" if arr.size and arr.dtype.kind in "fiub" else ""
    return Panel(img, f"{esc(str(arr.dtype))} {'×'.join(map(str, arr.shape))} {stats}")


def render_bytes_generic(data: bytes, ctx: SampleContext) -> Panel:
    return Panel(None, f"{len(data):,} bytes")


RENDERERS: dict[str, Renderer] = {
    "rgb": render_rgb,
    "crop_settings": render_crops,
    "depth": render_depth,
    "normal": render_normal,
    "canny_edge": render_edges,
    "sam_edge": render_edges,
    "semseg_coco": render_semseg,
    "sam_instance": render_sam_instance,
    "human_poses": render_poses,
    "det": render_det,
    "caption": render_caption,
    "color_palette": render_palette,
    "metadata": render_metadata,
    "source": render_source,
    "clip": render_features,
    "dinov2": render_features,
    "imagebind": render_features,
}

# Modalities of the table without a renderer of their own, on purpose: shown by file type.
GENERIC_FOLDERS = ("t5_caption",)  # npz of T5 embeddings: its size

GENERIC: dict[str, Renderer] = {
    "png": render_image_generic, "jpg": render_image_generic, "jpeg": render_image_generic,
    "webp": render_image_generic, "json": render_json_generic, "txt": render_text_generic,
    "npy": render_npy_generic,
}


def renderer_for(folder: str, ext: str) -> Renderer:
    base = folder.split("~")[0]  # token versions: tok_rgb@224~1a2b3c4d
    if base.startswith("tok_"):
        return render_tokens
    for name in (base, base.split("@")[0]):
        if name in RENDERERS:
            return RENDERERS[name]
    return GENERIC.get(ext.lower(), render_bytes_generic)


def render_member(folder: str, ext: str, data: bytes, ctx: SampleContext) -> Panel:
    """Never raises: an invalid member or a renderer failure becomes a labelled panel."""
    if len(data) == 0:
        return Panel(None, "<b>invalid record</b> (0 bytes)", invalid=True)
    try:
        return renderer_for(folder, ext)(data, ctx)
    except Exception as exc:  # a report must show every sample, even an undecodable one
        return Panel(None, f"<b>could not render</b>: {esc(type(exc).__name__)}: {esc(str(exc)[:200])}")
