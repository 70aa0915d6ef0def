"""Calibration and evaluation data: a folder read one file at a time, so memory stays bounded.

The folder formats are documented once, in DATA_FORMAT (edgemm/commands/convert.py), which is what
`edgemm convert --help` shows; this module implements them.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from edgemm.bundle import Bundle, InputSpec
from edgemm.converters.detection_eval import BoxLabels
from edgemm.decisions import primary_output as decisions_primary
from edgemm.detection import Boxes
from edgemm.errors import EdgemmError
from edgemm.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_video_frames, read_wav
from edgemm.preprocess import preprocess_audio, preprocess_video, resample

log = logging.getLogger(__name__)

LABEL_KEY = "label"


@dataclass
class BoxTruth:
    """One image's labelled boxes, in its own pixels, and its size (height, width): the truth of a detector's
    primary output, read from a detection folder's YOLO txt or COCO JSON (detection_eval.BoxLabels)."""

    boxes: Boxes
    frame_hw: tuple[int, int]


@dataclass
class Sample:
    tensors: dict[str, np.ndarray]  # input name -> tensor with a leading batch dim
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # output name -> targets, batch-leading
    name: str = ""
    # A detector's box labels, one per batch item (ragged, so not in labels), when the folder has them.
    truth: list[BoxTruth] | None = None

    @property
    def batch(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def row(self, i: int) -> "Sample":
        """Batch item i as a sample of batch one, named after it."""
        return Sample({k: v[i:i + 1] for k, v in self.tensors.items()},
                      {k: v[i:i + 1] for k, v in self.labels.items()}, f"{self.name}[{i}]",
                      None if self.truth is None else self.truth[i:i + 1])


def decision_graph(bundle: Bundle) -> str:
    """The graph whose outputs are the bundle's decisions (FusionModel.decision_graph, without runners)."""
    m = bundle.manifest
    return {"early": lambda: bundle.single_graph, "intermediate": lambda: m.fusion.head,
            "late": lambda: next(iter(m.fusion.members.values()))}[m.fusion.form]()


def primary_output(bundle: Bundle) -> str:
    """The output `label` refers to, the accuracy guard measures and reports lead with: the same output the
    live pipeline decides and alerts on (edgemm.decisions.primary_output over the decision graph's outputs),
    so that `edgemm eval` and `edgemm run` never talk about different outputs."""
    return decisions_primary({o.name: o for o in bundle.manifest.graphs[decision_graph(bundle)].outputs})


def sensor_inputs(bundle: Bundle) -> dict[str, InputSpec]:
    """Input name -> spec for every input fed from data (everything but embeddings/presence/state)."""
    out: dict[str, InputSpec] = {}
    for _, spec in bundle.manifest.all_inputs():
        if spec.modality in ("video", "audio", "other") and spec.value is None:  # constants are not data
            out.setdefault(spec.name, spec)
    return out


class DataFolder:
    """Iterates the samples of a data folder, one file (or one stem group) in memory at a time. A single
    .npz file stands for a folder holding only it."""

    def __init__(self, folder: str | Path, bundle: Bundle, what: str = "Data folder"):
        self.source, self.bundle, self.what = Path(folder), bundle, what  # source: what the user named
        if self.source.is_file() and self.source.suffix.lower() != ".npz":
            raise EdgemmError(f"{what}: {self.source} | Is a file; expected a folder of .npz files or media files "
                              "(or one .npz file).")
        if not self.source.exists():
            raise EdgemmError(f"{what}: {self.source} | Not found; expected a folder of .npz files or media files "
                              "(or one .npz file).")
        self.folder = self.source.parent if self.source.is_file() else self.source
        self.inputs = sensor_inputs(bundle)
        self.primary = primary_output(bundle)
        if self.source.is_file():
            self.npz, self.media, self.labels, self._ignored = [self.source], {}, {}, set()
            self.box_labels = None
            return
        self.npz = sorted(self.folder.glob("*.npz"))
        media = IMAGE_SUFFIXES | VIDEO_SUFFIXES | AUDIO_SUFFIXES
        groups: dict[str, dict[str, Path]] = {}
        for p in sorted(self.folder.iterdir()):
            suffix = p.suffix.lower()
            if suffix in media:
                kind = "audio" if suffix in AUDIO_SUFFIXES else "video"
                groups.setdefault(p.stem, {})[kind] = p
        self.media = groups
        if not self.npz and not self.media:
            raise EdgemmError(f"{what}: {self.folder} | Is empty; expected .npz files keyed by input name, "
                              "or images/videos/WAVs grouped by file stem.")
        if self.npz and self.media:
            raise EdgemmError(f"{what}: {self.folder} | Mixes .npz and media files; expected one kind.")
        self.labels = self._read_labels_csv() if self.media else {}
        self.box_labels = self._detection_labels()
        self._ignored: set[str] = set()

    def __len__(self) -> int:
        return len(self.npz) or len(self.media)

    def sample_count(self) -> int:
        """Samples of batch one in the folder: the rows of its .npz files (from the array headers; a file
        whose header cannot be read counts one, and reading it says what is wrong), else one per media item."""
        if self.npz:
            return sum(_npz_row_count(p) or 1 for p in self.npz)
        return len(self.media)

    # -- npz -----------------------------------------------------------------------------------------
    def _npz_sample(self, path: Path) -> Sample:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:
            raise EdgemmError(f"{self.what}: {path} | Not a readable .npz ({exc}); expected numpy.savez output.") from exc
        tensors, labels = {}, {}
        for key, arr in arrays.items():
            if key == LABEL_KEY:
                labels[self.primary] = arr
            elif key.startswith(LABEL_KEY + ":"):
                labels[key.split(":", 1)[1]] = arr
            elif key in self.inputs:
                _check_baked_tensor(arr, self.inputs[key], f"{self.what}: {path}")
                tensors[key] = _as_input_dtype(arr, self.inputs[key])
            elif key not in self._ignored:
                # One data set serves several models (a video-only baseline reads the files of the AV set):
                # tensors for inputs this model does not have are skipped, and said once.
                self._ignored.add(key)
                log.info("%s: %s: tensor %r is not an input of this model; ignored", self.what, path, key)
        missing = [n for n in self.inputs if n not in tensors]
        if missing:
            raise EdgemmError(f"{self.what}: {path} | Has no tensor for input {missing[0]} (it holds "
                              f"{', '.join(arrays) or 'nothing'}); expected keys: {', '.join(self.inputs)}.")
        batches = {k: v.shape[0] if v.ndim else None for k, v in {**tensors, **labels}.items()}
        if len(set(batches.values())) != 1 or None in batches.values():
            raise EdgemmError(f"{self.what}: {path} | Tensors disagree on the batch (first) dim {batches}; "
                              "expected the same number of samples in every key.")
        return Sample(tensors, labels, path.name)

    # -- media ---------------------------------------------------------------------------------------
    def _read_labels_csv(self) -> dict[str, dict[str, object]]:
        path = self.folder / "labels.csv"
        if not path.exists():
            return {}
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "name" not in rows[0]:
            raise EdgemmError(f"{self.what}: {path} | Has no 'name' column; expected a header like name,label.")
        out = {}
        for row in rows:
            out[row["name"]] = {(self.primary if k == LABEL_KEY else k.split(":", 1)[1]): v
                                for k, v in row.items() if k and k.startswith(LABEL_KEY)}
        return out

    def _detection_labels(self) -> BoxLabels | None:
        """A detector's box labels in the folder (YOLO txt per image or a COCO JSON, as `edgemm eval` reads
        them), or None: the primary output is not a detection, or the folder's images carry no boxes."""
        spec = next((o for g in self.bundle.manifest.graphs.values() for o in g.outputs if o.name == self.primary),
                    None)
        if spec is None or spec.detection is None:
            return None
        images = [f["video"] for f in self.media.values() if f.get("video") is not None
                  and f["video"].suffix.lower() in IMAGE_SUFFIXES]
        labels = BoxLabels(self.folder)
        return labels if images and labels.present(images) else None

    def _label_value(self, output: str, value: str, where: str) -> np.ndarray:
        out_spec = None
        for g in self.bundle.manifest.graphs.values():
            for o in g.outputs:
                if o.name == output:
                    out_spec = o
        if out_spec is None:
            raise EdgemmError(f"{self.what}: {where} | Label column for {output!r}, which is not an output.")
        if out_spec.labels and value in out_spec.labels:
            return np.array([out_spec.labels.index(value)], np.int64)
        try:
            number = float(value)
        except ValueError as exc:
            raise EdgemmError(f"{self.what}: {where} | Label {value!r} for {output} is neither a number nor one of "
                              f"its class names.") from exc
        if out_spec.task == "classification":
            return np.array([int(number)], np.int64)
        return np.array([number], np.float32)

    def _media_sample(self, stem: str, files: dict[str, Path]) -> Sample:
        tensors, frame_hw = {}, None
        for name, spec in self.inputs.items():
            if spec.modality == "video":
                if "video" not in files:
                    raise EdgemmError(f"{self.what}: {self.folder / stem} | No image or video file for input {name}.")
                # Only the frames at the middle of the clip are decoded and kept (a minute of 1080p would
                # otherwise be ~10 GB of frames to use a few).
                frames = read_video_frames(files["video"], max_frames=spec.preprocess.frames, start="middle")
                frame_hw = tuple(int(v) for v in frames[0].shape[:2]) if frames else None
                tensors[name] = preprocess_video(frames, spec)
            elif spec.modality == "audio":
                if "audio" not in files:
                    raise EdgemmError(f"{self.what}: {self.folder / stem} | No WAV file for input {name}.")
                wav, rate = read_wav(files["audio"])
                if rate != spec.preprocess.sample_rate:
                    log.info("%s: resampling %d Hz -> %d Hz", files["audio"], rate, spec.preprocess.sample_rate)
                    wav = resample(wav, rate, spec.preprocess.sample_rate)
                want = spec.preprocess.window_samples
                if wav.size > want:  # a clip longer than the window: its middle
                    start = (wav.size - want) // 2
                    wav = wav[start:start + want]
                tensors[name] = preprocess_audio(wav, spec)
            else:
                raise EdgemmError(f"{self.what}: {self.folder} | Input {name} is not video or audio, so it cannot "
                                  "come from media files; expected .npz files.")
        labels = {out: self._label_value(out, v, f"labels.csv row {stem}")
                  for out, v in self.labels.get(stem, {}).items() if v not in ("", None)}  # short row: None
        return Sample(tensors, labels, stem, self._truth(files.get("video"), frame_hw))

    def _truth(self, path: Path | None, frame_hw: tuple[int, int] | None) -> list[BoxTruth] | None:
        """The image's box labels (a video file has none: it stays unlabelled)."""
        if self.box_labels is None or path is None or frame_hw is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            return None
        return [BoxTruth(self.box_labels.truth(path, frame_hw), frame_hw)]

    # -- iteration -----------------------------------------------------------------------------------
    def samples(self, progress: bool = False, spread: int | None = None,
                files: list[Path] | None = None) -> Iterator[Sample]:
        """Every file's samples in name order; with spread (fewer than the folder's files), only that many
        files, evenly spaced over the folder; with files, only those .npz files."""
        items = files if files is not None else self.npz or list(self.media.items())
        if spread is not None and 0 < spread < len(items):
            # A limit takes files from all over the folder, not the first ones: folders are named by time,
            # place or condition (frames of one recording, `day_*` before `night_*`), and the first N files
            # would be one scene, or leave a condition out of the activation ranges.
            items = [items[i * len(items) // spread] for i in range(spread)]
        for item in _progress(items, self.what, enabled=progress):
            yield self._npz_sample(item) if isinstance(item, Path) else self._media_sample(*item)

    def single_samples(self, progress: bool = False, limit: int | None = None) -> Iterator[Sample]:
        """Samples split to a batch of one each (what calibration and most evaluation loops want); with a
        limit smaller than the folder's samples, spread evenly over it: over the rows of .npz files (one file
        of 5000 samples sorted by condition must not calibrate on its first 512), else over the files
        (``samples(spread=)``)."""
        if limit is not None and limit <= 0:
            return
        rows = self._spread_rows(limit) if limit is not None and self.npz else None
        if rows is not None:
            yield from self._picked_rows(rows, progress)
            return
        n = 0
        for s in self.samples(progress, spread=limit):
            for i in range(s.batch):
                yield s.row(i)
                n += 1
                if limit is not None and n >= limit:
                    return  # before the next file is opened

    def _spread_rows(self, limit: int) -> dict[Path, list[int]] | None:
        """File -> the rows to take, ``limit`` of them evenly spaced over all the .npz files' rows (read from
        each array header, not the data); None where the folder holds no more than ``limit`` rows or a header
        cannot be read (samples() then says what is wrong with the file)."""
        counts = [(path, _npz_row_count(path)) for path in self.npz]
        if any(c is None for _, c in counts):
            return None
        total = sum(c for _, c in counts)
        if total <= limit:
            return None
        picks = [i * total // limit for i in range(limit)]
        out: dict[Path, list[int]] = {}
        start, k = 0, 0
        for path, c in counts:
            while k < len(picks) and picks[k] < start + c:
                out.setdefault(path, []).append(picks[k] - start)
                k += 1
            start += c
        return out

    def _picked_rows(self, rows: dict[Path, list[int]], progress: bool) -> Iterator[Sample]:
        """The rows _spread_rows picked, file by file, each a sample of batch one."""
        by_name = {path.name: picked for path, picked in rows.items()}
        for s in self.samples(progress, files=list(rows)):
            for i in by_name[s.name]:
                yield s.row(i)


def _npz_row_count(path: Path) -> int | None:
    """The first array's leading dim in a .npz, from its .npy header (nothing else is read); None if unreadable."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith(".npy")), None)
            if name is None:
                return None
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = read(f)[0]
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return int(shape[0]) if shape else None


def _check_baked_tensor(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    """Tensors saved for the unbaked model (normalised float NCHW, log-mel) do not fit a baked input: said in
    one line that names what the baked input takes, rather than a dtype mismatch further on."""
    pre = spec.preprocess
    if pre is None or not pre.baked:
        return
    video = spec.modality == "video"
    fits = arr.ndim == len(spec.layout) and (arr.dtype == np.uint8 if video else arr.dtype.kind == "f")
    if not fits:
        takes = "uint8 camera frames (N, H, W, 3) BGR" if video else "the waveform (N, samples)"
        raise EdgemmError(f"{where} | Input {spec.name} has its preprocessing baked into the graph and takes {takes}; "
                          f"this .npz holds {arr.dtype} {tuple(arr.shape)} (preprocessed tensors?); expected raw "
                          "media files or tensors as the baked input takes them.")


def _as_input_dtype(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Float data becomes the input's float dtype: np.savez of plain numpy arrays gives float64, and every
    consumer (calibration, evaluation, the accuracy guard) reads the folder through here. Anything else
    is left for the feed check to refuse with the input's name."""
    if arr.dtype.kind != "f":
        return arr
    want = np.dtype(spec.dtype) if spec.dtype in ("float16", "float32", "float64") else None
    return arr.astype(want) if want is not None and arr.dtype != want else arr


def _progress(items, what: str, enabled: bool):
    """A one-line progress bar on stderr (only on a terminal, or when asked)."""
    total = len(items)
    show = enabled and total > 1
    start = time.monotonic()
    for i, item in enumerate(items, 1):
        yield item
        if show:
            elapsed = time.monotonic() - start
            bar = "#" * int(30 * i / total)
            sys.stderr.write(f"\r{what}: [{bar:<30}] {i}/{total} files, {elapsed:.1f} s")
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
