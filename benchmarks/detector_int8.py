"""INT8 mAP drop of a detector: `edgemm convert --precision int8`, then `edgemm eval --against` the float model.

    python benchmarks/detector_int8.py --model DETECTOR --calib CALIB_DIR --test TEST_DIR [--max-drop POINTS]
    python benchmarks/detector_int8.py            # the stand-in: a colour-square detector on generated scenes

DETECTOR is a bundle or a plain .onnx (a YOLO export is recognised from its metadata); CALIB_DIR holds images,
TEST_DIR images with YOLO txt labels or a COCO JSON (see `edgemm eval --help`). Prints mAP@0.5 and
mAP@0.5:0.95 of both models, the drop in points, the box agreement and the conversion's guard figures, and
writes them to WORK/detector_int8.json.

Without --model it builds the stand-in from tests/onnx_models.py (a 1x1 Conv and pooling that score pure
colours per grid cell, in the YOLOv8 output layout) and 64x64 scenes with 8 px squares: it shows the path
works, end to end; its figure says nothing about a trained network's sensitivity to INT8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _standin(work: Path) -> tuple[Path, Path, Path]:
    import cv2

    sys.path.insert(0, str(REPO))
    from tests import onnx_models

    manifest = onnx_models.detector_manifest({"format": "yolov8", "conf": 0.5}, [{"name": "output0"}])
    model = onnx_models.write_detector_bundle(work / "float.edgemm",
                                              onnx_models.colour_detector(conv=True, box=8.0), manifest)
    rng = np.random.default_rng(0)
    folders = {}
    for name, n in (("calib", 32), ("test", 100)):
        d = folders[name] = work / name
        d.mkdir()
        for i in range(n):
            frame = np.zeros((64, 64, 3), np.uint8)
            rows = []
            for _ in range(int(rng.integers(1, 4))):
                x, y, ch = int(rng.integers(0, 8)) * 8, int(rng.integers(0, 8)) * 8, int(rng.integers(3))
                if frame[y:y + 8, x:x + 8].any():
                    continue
                frame[y:y + 8, x:x + 8, ch] = int(rng.integers(160, 256))
                rows.append(f"{2 - ch} {(x + 4) / 64} {(y + 4) / 64} {8 / 64} {8 / 64}")
            cv2.imwrite(str(d / f"s{i:03d}.png"), frame)
            if name == "test":
                (d / f"s{i:03d}.txt").write_text("\n".join(rows) + "\n")
    return model, folders["calib"], folders["test"]


def _edgemm(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgemm", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"edgemm {args[0]} failed: {proc.stderr.strip()}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--calib")
    ap.add_argument("--test")
    ap.add_argument("--max-drop", type=float, help="passed to edgemm convert (the guard works on box agreement)")
    ap.add_argument("--work", default=str(REPO / "build" / "detector_int8"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.model:
        if not (args.calib and args.test):
            sys.exit("--model needs --calib and --test")
        model, calib, test = Path(args.model), Path(args.calib), Path(args.test)
    else:
        model, calib, test = _standin(work)
    int8 = work / "int8.edgemm"
    extra = ["--max-drop", args.max_drop] if args.max_drop is not None else []
    _edgemm("convert", model, "-o", int8, "--precision", "int8", "--calib", calib, "--quiet", *extra)
    _edgemm("eval", int8, "--against", model, "--data", test, "--json", work / "eval.json")
    report = json.loads((work / "eval.json").read_text())
    conversion = json.loads((int8 / "report.json").read_text()).get("conversion", {})
    result = {"model": str(model), "test": str(test), "images": report["images"], "objects": report["objects"],
              "float": report["original"], "int8": report["model"], "drop_points": report["drop_points"],
              "agreement": report["agreement"], "flavour": conversion.get("int8_flavours"),
              "guard": conversion.get("accuracy_guard")}
    (work / "detector_int8.json").write_text(json.dumps(result, indent=2))
    for key in ("float", "int8"):
        r = result[key]
        print(f"{key:5s}  mAP@0.5 {r['map50']:.4f}  mAP@0.5:0.95 {r['map']:.4f}  P {r['precision']:.4f}  "
              f"R {r['recall']:.4f}")
    d = result["drop_points"]
    print(f"drop   mAP@0.5 {d['map50']:+.2f} points, mAP@0.5:0.95 {d['map']:+.2f} points; box F1 vs float "
          f"{result['agreement']['box_f1']:.4f}; flavour {result['flavour']}")


if __name__ == "__main__":
    main()
