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

from edgemm.detection import Boxes, iou_matrix


class Kalman:
    """Constant-velocity Kalman filter on (cx, cy, w, h); noise scaled by the box height as in ByteTrack."""

    def __init__(self, box: np.ndarray):
        cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
        self.x = np.array([cx, cy, w, h, 0, 0, 0, 0], np.float64)
        s = max(h, 1.0)
        self.p = np.diag(np.square([s / 10, s / 10, s / 10, s / 10, s / 2, s / 2, s / 2, s / 2]))

    def predict(self, dt: float) -> None:
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt
        s = max(self.x[3], 1.0)
        q = np.diag(np.square([s / 20, s / 20, s / 20, s / 20, s / 160, s / 160, s / 160, s / 160])) * max(dt, 1e-3)
        self.x = f @ self.x
        self.p = f @ self.p @ f.T + q

    def update(self, box: np.ndarray) -> None:
        z = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])
        s = max(z[3], 1.0)
        r = np.diag(np.square([s / 20, s / 20, s / 20, s / 20]))
        h = np.eye(4, 8)
        gain = self.p @ h.T @ np.linalg.inv(h @ self.p @ h.T + r)
        self.x = self.x + gain @ (z - h @ self.x)
        self.p = (np.eye(8) - gain @ h) @ self.p

    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


@dataclass
class Track:
    id: int
    cls: int
    kalman: Kalman
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
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    t: float | None = None

    def update(self, boxes: Boxes, t: float) -> tuple[list[int | None], list[tuple[str, Track]]]:
        """Match this frame's boxes; returns (track id or None per box, [("entered"|"left", track)])."""
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        for tr in self.tracks:
            tr.kalman.predict(dt)
        ids: list[int | None] = [None] * len(boxes)
        free = list(range(len(self.tracks)))
        high = np.flatnonzero(boxes.scores >= self.high)
        low = np.flatnonzero(boxes.scores < self.high)
        for dets, least in ((high, self.match_iou), (low, self.low_match_iou)):
            for d, k in self._match(boxes, dets, free, least):
                tr = self.tracks[k]
                tr.kalman.update(boxes.xyxy[d])
                tr.last_seen, tr.hits = t, tr.hits + 1
                ids[d] = tr.id
                free.remove(k)
        for d in high:
            if ids[d] is None:
                self.tracks.append(Track(self.next_id, int(boxes.classes[d]), Kalman(boxes.xyxy[d]), t))
                ids[d] = self.next_id
                self.next_id += 1
        events: list[tuple[str, Track]] = []
        for tr in self.tracks:
            if not tr.announced and tr.hits >= self.min_hits:
                tr.announced = True
                events.append(("entered", tr))
        gone = [tr for tr in self.tracks if t - tr.last_seen > self.max_age_s]
        events += [("left", tr) for tr in gone if tr.announced]
        self.tracks = [tr for tr in self.tracks if t - tr.last_seen <= self.max_age_s]
        return ids, events

    def _match(self, boxes: Boxes, dets: np.ndarray, free: list[int], least: float) -> list[tuple[int, int]]:
        if not len(dets) or not free:
            return []
        predicted = np.stack([self.tracks[k].kalman.box() for k in free])
        iou = iou_matrix(boxes.xyxy[dets], predicted)
        same = boxes.classes[dets][:, None] == np.array([self.tracks[k].cls for k in free])[None, :]
        iou = np.where(same, iou, 0.0)
        pairs = []
        used_d, used_t = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), iou.shape[1])
            if iou[i, j] < least:
                break
            if i in used_d or j in used_t:
                continue
            used_d.add(i)
            used_t.add(j)
            pairs.append((int(dets[i]), free[j]))
        return pairs

    def close(self) -> list[tuple[str, Track]]:
        """Every announced track leaves at shutdown, so each entered has a left in the log."""
        left = [("left", tr) for tr in self.tracks if tr.announced]
        self.tracks = []
        return left
