"""A labelled text-line set for PP-OCR's recogniser: lines of known text rendered here, and the recogniser's
own pre- and post-processing (rapidocr_onnxruntime 1.4.4, ch_ppocr_rec), to turn "output cosine against FP32"
into an accuracy: the share of lines read exactly, and the share of characters right (1 - edit distance /
length).

No wheel in the zoo ships labelled text (rapidocr-onnxruntime 1.4.4 ships its three models, code and a
config, no images), so the lines are rendered: words, numbers, dates and prices in the DejaVu fonts the system
has (sans, serif, mono; regular, bold, oblique), dark on light and light on dark, at several sizes, on
lightly textured backgrounds, with mild blur and noise. They are Latin text (the model reads Chinese too, but
no CJK font is installed), printed, clean: an easy set where FP32 reads nearly every line, so a loss shows as
lines INT8 gets wrong.

    python benchmarks/ocr_text.py --model benchmarks/.zoo/models/ocr_rec/ch_PP-OCRv4_rec_infer.onnx

For the detector, pages(): several such lines at random positions on a larger canvas of the same kind of
background, with det_feed(), the detector's own preprocessing.

Importable: lines(), oriented(), feed(), pages(), det_feed(), decode(), characters(), score().
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansCondensed-Oblique.ttf", "DejaVuSerif-Bold.ttf")
WORDS = ("exit", "open", "closed", "station", "platform", "north", "south", "parking", "entrance", "street",
         "road", "avenue", "hotel", "coffee", "bakery", "pharmacy", "office", "market", "garden", "museum",
         "library", "school", "bridge", "tunnel", "airport", "terminal", "gate", "floor", "room", "total",
         "price", "sale", "discount", "delivery", "order", "invoice", "number", "date", "time", "speed",
         "limit", "warning", "danger", "stop", "slow", "left", "right", "only", "bus", "taxi", "train", "city",
         "centre", "police", "hospital", "emergency", "phone", "email", "water", "power", "battery", "model")
HEIGHT, WIDTH = 48, 320  # the recogniser's input (rapidocr's rec_img_shape)
CLS_WIDTH = 192  # the orientation classifier's (rapidocr's cls_image_shape 3 x 48 x 192)


def _text(rng) -> str:
    kind = rng.integers(5)
    if kind == 0:  # words
        return " ".join(rng.choice(WORDS, rng.integers(1, 4)))
    if kind == 1:  # a number with a word
        return f"{rng.choice(WORDS)} {rng.integers(1, 10000)}"
    if kind == 2:  # a date / time
        return f"{rng.integers(1, 29):02d}-{rng.integers(1, 13):02d}-{rng.integers(1990, 2031)} " \
               f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"
    if kind == 3:  # a price
        return f"{str(rng.choice(WORDS)).capitalize()} ${rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
    return str(rng.choice(WORDS)).upper() + f" {rng.integers(1, 100)}"  # a sign


def lines(n: int = 200, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """n (BGR image, text) pairs, each a single line that fits the recogniser's 48 x 320 input."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        text = _text(rng)
        font = ImageFont.truetype(str(FONT_DIR / FONTS[rng.integers(len(FONTS))]), int(rng.integers(22, 40)))
        x0, y0, x1, y1 = font.getbbox(text)
        pad = int(rng.integers(4, 12))
        w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
        if w / h > WIDTH / HEIGHT:  # would be squeezed to fit: draw another
            continue
        light = int(rng.integers(190, 256))
        dark = int(rng.integers(0, 70))
        ink, paper = (dark, light) if rng.random() < 0.8 else (light, dark)
        tint = rng.integers(-15, 16, 3)
        bg = np.clip(paper + tint + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)
        img = Image.fromarray(bg)
        ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=font,
                                 fill=tuple(int(c) for c in np.clip(ink + tint, 0, 255)))
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 3, (h, w, 3))
        out.append((np.clip(arr, 0, 255).astype(np.uint8)[:, :, ::-1].copy(), text))
    return out


def feed(img: np.ndarray, width: int = WIDTH) -> np.ndarray:
    """rapidocr's resize_norm_img for one line: height 48, aspect kept, (x / 255 - 0.5) / 0.5, zero-padded
    to the width (320 for the recogniser, CLS_WIDTH for the classifier); 1 x 3 x 48 x width float32."""
    import cv2

    h, w = img.shape[:2]
    rw = min(width, int(math.ceil(HEIGHT * w / h)))
    x = cv2.resize(img, (rw, HEIGHT)).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, HEIGHT, width), np.float32)
    out[:, :, :rw] = (x - 0.5) / 0.5
    return out[None]


def oriented(n: int = 200, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """n (BGR image, label) pairs for the orientation classifier: lines upright (0) or turned 180 degrees (1),
    alternating (its classes are rapidocr's label_list ['0', '180'])."""
    return [(img[::-1, ::-1].copy() if k % 2 else img, k % 2) for k, (img, _) in enumerate(lines(n, seed))]


PAGE = 320  # the detector's input in the zoo (x:1x3x320x320)


def pages(n: int = 32, seed: int = 0, size: int = PAGE) -> list[tuple[np.ndarray, list[tuple[str, tuple]]]]:
    """n (BGR image, [(text, (x0, y0, x1, y1)), ...]) pairs for the text detector: 2-6 lines each, drawn at
    random positions (not overlapping) on a size x size page of the lines' kind of background, in the page's
    ink (dark on light, or light on dark), smaller than lines() draws them so several fit."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        light, dark = int(rng.integers(190, 256)), int(rng.integers(0, 70))
        ink, paper = (dark, light) if rng.random() < 0.8 else (light, dark)
        tint = rng.integers(-15, 16, 3)
        bg = np.clip(paper + tint + rng.normal(0, 4, (size, size, 1)), 0, 255).astype(np.uint8)
        img = Image.fromarray(bg)
        draw = ImageDraw.Draw(img)
        boxes: list[tuple[str, tuple]] = []
        want = int(rng.integers(2, 7))
        for _try in range(60):  # random places; a line that would overlap or leave the page is redrawn
            if len(boxes) == want:
                break
            text = _text(rng)
            font = ImageFont.truetype(str(FONT_DIR / FONTS[rng.integers(len(FONTS))]), int(rng.integers(14, 30)))
            x0, y0, x1, y1 = font.getbbox(text)
            w, h = x1 - x0, y1 - y0
            if w >= size - 8 or h >= size - 8:
                continue
            x, y = int(rng.integers(4, size - w - 4)), int(rng.integers(4, size - h - 4))
            box = (x, y, x + w, y + h)
            if any(box[0] < b[2] + 6 and b[0] < box[2] + 6 and box[1] < b[3] + 6 and b[1] < box[3] + 6
                   for _, b in boxes):
                continue
            draw.text((x - x0, y - y0), text, font=font, fill=tuple(int(c) for c in np.clip(ink + tint, 0, 255)))
            boxes.append((text, box))
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 3, (size, size, 3))
        out.append((np.clip(arr, 0, 255).astype(np.uint8)[:, :, ::-1].copy(), boxes))
    return out


def det_feed(img: np.ndarray) -> np.ndarray:
    """rapidocr's DetPreProcess for a page already at a multiple of 32: BGR as read, (x / 255 - 0.5) / 0.5,
    1 x 3 x H x W float32."""
    x = (img.astype(np.float32) / 255 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def characters(model_path: str | Path) -> list[str]:
    """The model's CTC alphabet: blank, the 'character' list in its metadata, space (rapidocr's order)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def decode(pred: np.ndarray, chars: list[str]) -> str:
    """Greedy CTC: the best class per step, repeats merged, blanks dropped."""
    idx = pred.reshape(-1, pred.shape[-1]).argmax(-1)
    keep = [i for k, i in enumerate(idx) if i != 0 and (k == 0 or i != idx[k - 1])]
    # The padding and the margins read as spaces at the ends (rapidocr leaves them; a reader strips them).
    return "".join(chars[i] for i in keep).strip()


def _edit(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def score(read: list[str], truth: list[str]) -> dict:
    """Exact line matches and character accuracy, in percent."""
    exact = sum(r == t for r, t in zip(read, truth))
    errors = sum(_edit(r, t) for r, t in zip(read, truth))
    return {"lines": len(truth), "exact_pct": 100 * exact / len(truth),
            "char_acc_pct": 100 * (1 - errors / sum(len(t) for t in truth))}


def main(argv=None) -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--show", type=int, default=10, help="print this many misread lines")
    args = ap.parse_args(argv)
    chars = characters(args.model)
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    data = lines(args.lines)
    read = [decode(sess.run(None, {sess.get_inputs()[0].name: feed(img)})[0], chars) for img, _ in data]
    truth = [t for _, t in data]
    print(score(read, truth))
    for r, t in [(r, t) for r, t in zip(read, truth) if r != t][:args.show]:
        print(f"  {t!r} read as {r!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
