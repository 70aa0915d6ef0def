"""Track ids that stay with an object across frames: ByteTrack's association with a constant-velocity Kalman filter.

Each frame: every track predicts where its box is now (Kalman, state cx, cy, w, h and their velocities);
the confident detections (score >= ``high``) are matched to tracks first by IoU, then the weak ones
(conf <= score < high: often an object half hidden) to the tracks still unmatched, which is what keeps an
id through a partial occlusion. A confident detection no track takes starts a new track; a track nobody
matched coasts on its prediction and is dropped after ``max_age_s`` unseen, so a short full occlusion
keeps the id too. Matching is per class and greedy on IoU (best pair first): with the few dozen boxes of a
frame it gives the same pairs as an optimal assignment in practice and needs no solver on the device.

Libraries weighed: supervision's ByteTrack pulls in the GUI OpenCV wheel, matplotlib and scipy; boxmot
needs torch; bytetracker and motpy are unmaintained. This module is numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgemm.detection import Boxes, match_boxes


def _std(h: np.ndarray, pos: float, vel: float) -> np.ndarray:
    """Per-track standard deviations (T, 8) scaled by the box height, as ByteTrack's filter does."""
    s = np.maximum(h, 1.0)[:, None]
    return np.hstack([np.repeat(s * pos, 4, axis=1), np.repeat(s * vel, 4, axis=1)])


def _measure(xyxy: np.ndarray) -> np.ndarray:
    """Corners (T, 4) -> cx, cy, w, h."""
    return np.hstack([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]]).astype(np.float64)


class Kalman:
    """Constant-velocity Kalman filters on (cx, cy, w, h) for all tracks at once: means (T, 8), covariances
    (T, 8, 8); one batched matrix product per step instead of a Python loop over tracks."""

    def __init__(self):
        self.x = np.zeros((0, 8))
        self.p = np.zeros((0, 8, 8))

    def add(self, xyxy: np.ndarray) -> None:
        z = _measure(xyxy)
        x = np.hstack([z, np.zeros_like(z)])
        p = np.einsum("ti,ij->tij", np.square(_std(z[:, 3], 0.1, 0.5)), np.eye(8))
        self.x, self.p = np.vstack([self.x, x]), np.concatenate([self.p, p])

    def keep(self, mask: np.ndarray) -> None:
        self.x, self.p = self.x[mask], self.p[mask]

    def predict(self, dt: float) -> None:
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        q = np.einsum("ti,ij->tij", np.square(_std(self.x[:, 3], 0.05, 1 / 160)) * max(dt, 1e-3), np.eye(8))
        self.x = self.x @ f.T
        self.p = f @ self.p @ f.T + q

    def update(self, rows: np.ndarray, xyxy: np.ndarray) -> None:
        z = _measure(xyxy)
        x, p = self.x[rows], self.p[rows]
        r = np.einsum("ti,ij->tij", np.square(_std(z[:, 3], 0.05, 0)[:, :4]), np.eye(4))
        gain = p[:, :, :4] @ np.linalg.inv(p[:, :4, :4] + r)  # H = [I 0]: H P H^T + R, P H^T
        self.x[rows] = x + (gain @ (z - x[:, :4])[:, :, None])[:, :, 0]
        self.p[rows] = p - gain @ p[:, :4, :]

    def boxes(self) -> np.ndarray:
        c, wh = self.x[:, :2], self.x[:, 2:4]
        return np.hstack([c - wh / 2, c + wh / 2]).astype(np.float32)


@dataclass
class Track:
    id: int
    cls: int
    last_seen: float
    hits: int = 1
    announced: bool = False


@dataclass
class Tracker:
    """ByteTrack-style tracker over Boxes in source-frame pixels; ``update`` returns a track id per box."""

    high: float = 0.5  # detections at or above start tracks and are matched first
    match_iou: float = 0.2  # least IoU for a confident detection to continue a track
    low_match_iou: float = 0.5  # stricter for weak detections
    max_age_s: float = 1.0  # a track unseen this long is dropped (occlusions shorter keep their id)
    min_hits: int = 2  # frames before a track counts as an object (object_entered)
    tracks: list[Track] = field(default_factory=list)  # row i of kalman belongs to tracks[i]
    kalman: Kalman = field(default_factory=Kalman)
    next_id: int = 1
    t: float | None = None

    def update(self, boxes: Boxes, t: float) -> tuple[list[int | None], list[tuple[str, Track]]]:
        """Match this frame's boxes; returns (track id or None per box, [("entered"|"left", track)])."""
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        self.kalman.predict(dt)
        ids: list[int | None] = [None] * len(boxes)
        free = list(range(len(self.tracks)))
        high = np.flatnonzero(boxes.scores >= self.high)
        low = np.flatnonzero(boxes.scores < self.high)
        for dets, least in ((high, self.match_iou), (low, self.low_match_iou)):
            pairs = self._match(boxes, dets, free, least)
            if pairs:
                d_idx, rows = (np.array(v) for v in zip(*pairs))
                self.kalman.update(rows, boxes.xyxy[d_idx])
            for d, k in pairs:
                tr = self.tracks[k]
                tr.last_seen, tr.hits = t, tr.hits + 1
                ids[d] = tr.id
                free.remove(k)
        born = [d for d in high if ids[d] is None]
        if born:
            self.kalman.add(boxes.xyxy[born])
        for d in born:
            self.tracks.append(Track(self.next_id, int(boxes.classes[d]), t))
            ids[d] = self.next_id
            self.next_id += 1
        events: list[tuple[str, Track]] = []
        for tr in self.tracks:
            if not tr.announced and tr.hits >= self.min_hits:
                tr.announced = True
                events.append(("entered", tr))
        gone = [tr for tr in self.tracks if t - tr.last_seen > self.max_age_s]
        events += [("left", tr) for tr in gone if tr.announced]
        alive = np.array([t - tr.last_seen <= self.max_age_s for tr in self.tracks], bool)
        self.kalman.keep(alive)
        self.tracks = [tr for tr, keep in zip(self.tracks, alive) if keep]
        return ids, events

    def _match(self, boxes: Boxes, dets: np.ndarray, free: list[int], least: float) -> list[tuple[int, int]]:
        if not len(dets) or not free:
            return []
        predicted = Boxes(self.kalman.boxes()[free], np.ones(len(free), np.float32),
                          np.array([self.tracks[k].cls for k in free]))
        return [(int(dets[i]), free[j]) for i, j in match_boxes(boxes.take(dets), predicted, least)]

    def close(self) -> list[tuple[str, Track]]:
        """Every announced track leaves at shutdown, so each entered has a left in the log."""
        left = [("left", tr) for tr in self.tracks if tr.announced]
        self.tracks = []
        self.kalman.keep(np.zeros(0, bool))
        return left
