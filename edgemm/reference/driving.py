"""Driving scenes rendered offline: a forward camera (numpy + OpenCV drawing) and a time-aligned microphone.

A scene is a seed: the layout (road, traffic, pedestrians, cyclists, traffic lights, maybe an emergency
vehicle and its siren, horns) is drawn from it, and any instant of it can be rendered under any
condition (day, dusk, night, rain, fog), so every model is scored on the same scenes in every condition.
Geometry is a pinhole camera over a flat road: boxes are exact projections, camera shake moves the
principal point, and an object hidden behind nearer ones (or by fog) is left out of the ground truth.
It is a synthetic stand-in, not a picture of real roads: flat-shaded boxes and figures, no textures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgemm.bundle import AudioPreprocess, InputSpec, VideoPreprocess

SIZE = 192  # square frames (height = width), the detector's input size
FOCAL = 150.0  # pixels
CAM_HEIGHT = 1.3  # metres
HORIZON = 0.42  # fraction of the frame height
SAMPLE_RATE = 16000
SOUND_SPEED = 343.0
CLASSES = ["car", "truck", "pedestrian", "cyclist", "traffic_light", "emergency"]
EMERGENCY = CLASSES.index("emergency")
CONDITIONS = ("day", "dusk", "night", "rain", "fog")
SIRENS = ("wail", "yelp", "hilo")
SCENE_S = 10.0
FOG_VISIBILITY_M = 45.0
FOG_HIDES = 0.85  # fog fraction beyond which an object is no longer ground truth ...
FOG_HIDES_LIT = 0.97  # ... unless its flashing light bar still shines through (it glows far beyond its body)
MIN_VISIBLE = 0.35  # fraction of a box not hidden by nearer objects, for it to count as ground truth
MIN_HEIGHT_PX = 6

VIDEO_PRE = VideoPreprocess(size=(SIZE, SIZE), color="rgb", scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0))
# Log-mel of the last second; mean/std standardise the log energies of the training split (seed 0).
AUDIO_PRE = AudioPreprocess(sample_rate=SAMPLE_RATE, window_s=1.0, feature="logmel", n_fft=400, hop_length=160,
                            n_mels=40, fmin=50.0, fmax=7600.0, log_offset=1e-6, mean=-6.0, std=3.5)
AUDIO_LABELS = ["none", "siren", "horn"]


def video_spec(name: str = "images") -> InputSpec:
    return InputSpec(name, "video", "float32", ["N", 3, SIZE, SIZE], "NCHW", VIDEO_PRE)


def audio_spec(name: str = "audio") -> InputSpec:
    return InputSpec(name, "audio", "float32", ["N", 1, AUDIO_PRE.n_mels, AUDIO_PRE.n_frames], "NCMT", AUDIO_PRE)


# --------------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------------


@dataclass
class Thing:
    cls: int
    x: float  # lateral, metres (right positive)
    z0: float  # distance ahead at t=0, metres
    vz: float  # change of distance, m/s (negative: getting closer)
    w: float
    h: float
    color: tuple
    elevation: float = 0.0  # bottom above the road (traffic lights)
    vx: float = 0.0
    lights: bool = False  # emergency light bar flashing
    state: int = 0  # traffic light: 0 red, 1 amber, 2 green

    def at(self, t: float) -> tuple[float, float]:
        return self.x + self.vx * t, self.z0 + self.vz * t


@dataclass
class Scene:
    seed: int
    speed: float  # ego speed, m/s
    things: list[Thing] = field(default_factory=list)
    siren: dict | None = None  # pattern, onset, thing index (or None: out of view), x, z0, vz, level
    horns: list[dict] = field(default_factory=list)
    shake: float = 1.0  # camera shake amplitude, pixels
    duration: float = SCENE_S

    def event(self, t: float) -> bool:
        """Truth of "emergency vehicle approaching": its siren is sounding and it is getting closer."""
        return self.siren is not None and t >= self.siren["onset"]


def _color(rng) -> tuple:
    palette = [(40, 40, 40), (200, 200, 200), (30, 30, 150), (150, 60, 30), (60, 120, 60), (120, 120, 130),
               (20, 90, 180), (90, 30, 90)]
    c = np.array(palette[rng.integers(len(palette))], float) + rng.uniform(-20, 20, 3)
    return tuple(np.clip(c, 0, 255))


def make_scene(seed: int) -> Scene:
    """The layout of one scene from its seed (any condition can be rendered from it)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["city", "suburb", "highway"])
    speed = {"city": rng.uniform(7, 13), "suburb": rng.uniform(12, 19), "highway": rng.uniform(20, 30)}[kind]
    sc = Scene(seed, float(speed), shake=float(rng.uniform(0.3, 3.0)))
    far = 70 + speed * SCENE_S
    for _ in range(rng.integers(1, 5)):  # same direction, ego lane or the right lane
        big = rng.random() < 0.25
        sc.things.append(Thing(1 if big else 0, float(rng.choice([0.0, 3.5])) + rng.uniform(-0.3, 0.3),
                               rng.uniform(10, 70), rng.uniform(-3, 3), 2.5 if big else rng.uniform(1.7, 2.0),
                               rng.uniform(3.0, 3.8) if big else rng.uniform(1.4, 1.7), _color(rng)))
    for _ in range(rng.integers(0, 4)):  # oncoming
        big = rng.random() < 0.2
        sc.things.append(Thing(1 if big else 0, -3.5 + rng.uniform(-0.3, 0.3), rng.uniform(30, far),
                               -(speed + rng.uniform(8, 20)), 2.5 if big else rng.uniform(1.7, 2.0),
                               rng.uniform(3.0, 3.8) if big else rng.uniform(1.4, 1.7), _color(rng)))
    if kind != "highway":
        for _ in range(rng.integers(0, 5)):
            side = rng.choice([-1, 1])
            crossing = rng.random() < 0.2
            sc.things.append(Thing(2, side * rng.uniform(5.5, 8.0), rng.uniform(8, far), -speed, 0.55,
                                   rng.uniform(1.5, 1.9), _color(rng), vx=-side * 1.3 if crossing else 0.0))
        for _ in range(rng.integers(0, 3)):
            sc.things.append(Thing(3, rng.uniform(5.0, 6.0), rng.uniform(10, far), -speed + rng.uniform(3, 6), 0.7,
                                   1.7, _color(rng)))
        for _ in range(rng.integers(0, 3)):
            sc.things.append(Thing(4, float(rng.choice([-1, 1])) * rng.uniform(5.5, 6.5), rng.uniform(20, far),
                                   -speed, 0.4, 1.0, (30, 30, 30), elevation=4.0, state=int(rng.integers(3))))
    r = rng.random()
    if r < 0.5:  # an emergency vehicle with its siren on, approaching
        onset = float(rng.uniform(0.5, 4.0))
        pattern = str(rng.choice(SIRENS))
        level = float(rng.uniform(0.6, 3.0))
        if rng.random() < 0.75:  # in the oncoming lane, first far or behind a truck, then in view
            v = speed + rng.uniform(8, 18)
            z_end = rng.uniform(12, 40)
            ev = Thing(EMERGENCY, -3.5, z_end + v * SCENE_S, -v, 2.0, 2.6, (235, 235, 235), lights=True)
            sc.things.append(ev)
            if rng.random() < 0.5:  # a truck ahead hides part of the way
                sc.things.append(Thing(1, -1.2, rng.uniform(14, 25), rng.uniform(-1, 1), 2.5, 3.6, _color(rng)))
            sc.siren = dict(pattern=pattern, onset=onset, x=ev.x, z0=ev.z0, vz=ev.vz, level=level)
        else:  # behind the car, catching up: heard, never seen by a forward camera
            v = rng.uniform(5, 10)
            z0 = -rng.uniform(60, 160)
            sc.siren = dict(pattern=pattern, onset=onset, x=0.0, z0=z0, vz=v, level=level)
    elif r < 0.62:  # a parked emergency vehicle, lights on or off, no siren: not approaching
        sc.things.append(Thing(EMERGENCY, rng.uniform(5.0, 6.0), rng.uniform(25, far), -speed, 2.0, 2.6,
                               (235, 235, 235), lights=bool(rng.random() < 0.5)))
    for _ in range(rng.integers(0, 3) if rng.random() < 0.4 else 0):
        sc.horns.append(dict(t=float(rng.uniform(0, SCENE_S - 1)), dur=float(rng.uniform(0.3, 1.2)),
                             f=float(rng.uniform(380, 520)), dist=float(rng.uniform(6, 40))))
    return sc


# --------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------


def _shake(sc: Scene, t: float) -> tuple[float, float]:
    ph = (sc.seed % 997) * 0.37
    return (sc.shake * (np.sin(2 * np.pi * 1.7 * t + ph) + 0.5 * np.sin(2 * np.pi * 5.3 * t + 2 * ph)),
            sc.shake * (np.sin(2 * np.pi * 2.3 * t + 3 * ph) + 0.5 * np.sin(2 * np.pi * 7.1 * t + ph)))


def _fog_alpha(z, condition):
    """How much of an object at distance z is fog (0: clear)."""
    if condition != "fog":
        return np.zeros_like(np.asarray(z, float))
    return 1.0 - np.exp(-np.asarray(z, float) / FOG_VISIBILITY_M * 2.3)


LIGHT = {"day": 1.0, "dusk": 0.55, "night": 0.16, "rain": 0.6, "fog": 0.85}
SKY = {"day": (235, 190, 140), "dusk": (120, 110, 200), "night": (30, 15, 10), "rain": (150, 145, 140),
       "fog": (200, 200, 200)}


def render_frame(sc: Scene, t: float, condition: str = "day") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The camera frame at time t: (BGR uint8 [SIZE, SIZE, 3], boxes [K,4] x1y1x2y2 pixels, classes [K])."""
    import cv2

    rng = np.random.default_rng((sc.seed * 1000003 + int(round(t * 100))) % (2 ** 63))
    dx, dy = _shake(sc, t)
    cx, hy = SIZE / 2 + dx, SIZE * HORIZON + dy
    light = LIGHT[condition]
    img = np.empty((SIZE, SIZE, 3), np.float32)
    rows = np.arange(SIZE, dtype=np.float32)[:, None]
    sky = np.array(SKY[condition], np.float32)
    img[:] = sky
    ground = rows > hy
    z_row = np.where(ground, FOCAL * CAM_HEIGHT / np.maximum(rows - hy, 1e-3), 1e4)
    grass = np.array((70, 120, 90), np.float32) * light
    img[ground[:, 0]] = grass
    # road: a trapezoid between x = -5.5 and +5.5 m, lanes at -1.75 / +1.75 / +5.25 m
    ys = np.arange(SIZE)
    for y in ys[ys > hy]:
        z = z_row[y, 0]
        xl, xr = cx + FOCAL * -5.5 / z, cx + FOCAL * 7.0 / z
        a, b = int(max(0, xl)), int(min(SIZE, xr))
        if b > a:
            img[y, a:b] = np.array((95, 95, 100), np.float32) * light
        for lane_x, dashed in ((-1.75, True), (1.75, True), (-5.3, False), (6.8, False)):
            if dashed and (z + sc.speed * t) % 12 > 6:
                continue
            px = cx + FOCAL * lane_x / z
            wpx = max(1.0, FOCAL * 0.15 / z)
            a, b = int(max(0, px - wpx / 2)), int(min(SIZE, px + wpx / 2 + 1))
            if b > a:
                img[y, a:b] = np.array((230, 230, 230), np.float32) * max(light, 0.3)
    fog = _fog_alpha(z_row, condition)[:, :, None]
    img = img * (1 - fog) + sky * fog

    # objects, far to near; an id buffer tells how much of each stays visible
    placed = []
    for i, th in enumerate(sc.things):
        x, z = th.at(t)
        if z < 3.0 or z > 200:
            continue
        y_bottom = hy + FOCAL * (CAM_HEIGHT - th.elevation) / z
        x1, x2 = cx + FOCAL * (x - th.w / 2) / z, cx + FOCAL * (x + th.w / 2) / z
        y1 = y_bottom - FOCAL * th.h / z
        if x2 < 0 or x1 > SIZE or y_bottom < 0 or y1 > SIZE:
            continue
        placed.append((z, i, th, x1, y1, x2, y_bottom))
    placed.sort(key=lambda p: -p[0])
    ids = np.full((SIZE, SIZE), -1, np.int32)
    glow = np.zeros((SIZE, SIZE, 3), np.float32)
    for z, i, th, x1, y1, x2, y2 in placed:
        _draw_thing(img, glow, th, x1, y1, x2, y2, z, t, light, condition, sc.speed)
        a, b, c, d = int(max(0, x1)), int(max(0, y1)), int(min(SIZE, np.ceil(x2))), int(min(SIZE, np.ceil(y2)))
        ids[b:d, a:c] = i
    boxes, classes = [], []
    for z, i, th, x1, y1, x2, y2 in placed:
        full = (x2 - x1) * (y2 - y1)
        bx = np.clip([x1, y1, x2, y2], 0, SIZE)
        area = (bx[2] - bx[0]) * (bx[3] - bx[1])
        if area < 0.5 * full or bx[3] - bx[1] < MIN_HEIGHT_PX or bx[2] - bx[0] < 2:
            continue
        a, b, c, d = int(bx[0]), int(bx[1]), int(np.ceil(bx[2])), int(np.ceil(bx[3]))
        visible = np.count_nonzero(ids[b:d, a:c] == i) / max(1, (c - a) * (d - b))
        if visible < MIN_VISIBLE or _fog_alpha(z, condition) > (FOG_HIDES_LIT if th.lights else FOG_HIDES):
            continue  # hidden behind nearer objects, or in fog no camera sees through
        boxes.append(bx)
        classes.append(th.cls)

    if condition == "rain":
        for _ in range(60):
            x0, y0 = rng.uniform(0, SIZE, 2)
            cv2.line(img, (int(x0), int(y0)), (int(x0 - 3), int(y0 + 12)), (190, 190, 190), 1)
        img = cv2.GaussianBlur(img, (0, 0), 0.9)
    if glow.any():
        img += cv2.GaussianBlur(glow, (0, 0), 2.0) * 2.5 + glow
    noise = {"night": 10.0, "dusk": 5.0, "rain": 4.0}.get(condition, 2.5)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    return (out, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def _draw_thing(img, glow, th: Thing, x1, y1, x2, y2, z, t, light, condition, speed):
    import cv2

    fog = float(_fog_alpha(z, condition))
    sky = np.array(SKY[condition], np.float32)

    def col(c, lit=light):
        return tuple(float(v) for v in np.array(c, np.float32) * lit * (1 - fog) + sky * fog)

    def rect(a, b, c, d, colour):
        cv2.rectangle(img, (int(round(a)), int(round(b))), (int(round(c)) - 1, int(round(d)) - 1), colour, -1)

    def lamp(px, py, r, colour, strength=1.0):
        if condition in ("night", "dusk", "rain", "fog"):
            cv2.circle(glow, (int(px), int(py)), max(1, int(r)), tuple(float(v) * strength * (1 - 0.7 * fog)
                                                                     for v in colour), -1)

    w, h = x2 - x1, y2 - y1
    oncoming = th.vz < -speed - 1
    if th.cls in (0, 1, 5):  # vehicles seen from front or back
        body_top = y1 + h * (0.45 if th.cls == 0 else 0.15)
        rect(x1, body_top, x2, y2 - h * 0.08, col(th.color))
        if th.cls == 0:
            rect(x1 + w * 0.12, y1, x2 - w * 0.12, body_top, col(np.array(th.color) * 0.8))
            rect(x1 + w * 0.2, y1 + h * 0.08, x2 - w * 0.2, body_top - h * 0.04, col((60, 50, 40)))
        elif th.cls == 1:
            rect(x1 + w * 0.1, y1, x2 - w * 0.1, body_top, col((80, 80, 80)))
        else:  # emergency van: red stripe, light bar on top
            rect(x1, y1 + h * 0.12, x2, y2 - h * 0.08, col(th.color))
            rect(x1 + w * 0.15, y1 + h * 0.2, x2 - w * 0.15, y1 + h * 0.45, col((70, 60, 50)))
            rect(x1, y1 + h * 0.58, x2, y1 + h * 0.68, col((30, 30, 220)))
            bar = (y1, y1 + h * 0.12)
            phase = int(t * 4) % 2
            left, right = ((255, 60, 40), (40, 40, 255)) if phase else ((70, 40, 40), (40, 40, 70))
            if not th.lights:
                left = right = (90, 90, 90)
            rect(x1 + w * 0.15, bar[0], x1 + w * 0.5, bar[1], col(left, 1.0 if th.lights else light))
            rect(x1 + w * 0.5, bar[0], x2 - w * 0.15, bar[1], col(right, 1.0 if th.lights else light))
            if th.lights:
                lamp(x1 + w * (0.3 if phase else 0.7), bar[0] + 1, w * 0.18,
                     (255, 60, 40) if phase else (40, 40, 255), 1.5)
        rect(x1 + w * 0.05, y2 - h * 0.1, x1 + w * 0.25, y2, col((15, 15, 15)))
        rect(x2 - w * 0.25, y2 - h * 0.1, x2 - w * 0.05, y2, col((15, 15, 15)))
        ly = y2 - h * 0.25
        lc = (230, 240, 255) if oncoming else (30, 30, 230)
        for lx in (x1 + w * 0.12, x2 - w * 0.12):
            rect(lx - w * 0.06, ly - h * 0.04, lx + w * 0.06, ly + h * 0.04, col(lc, max(light, 0.6)))
            lamp(lx, ly, max(1.5, w * 0.1), lc, 1.2 if oncoming else 0.6)
    elif th.cls == 2:  # pedestrian: head, torso, legs that swing
        head = h * 0.13
        cv2.circle(img, (int((x1 + x2) / 2), int(y1 + head / 2)), max(1, int(head / 2)), col((120, 150, 200)), -1)
        rect(x1 + w * 0.1, y1 + head, x2 - w * 0.1, y1 + h * 0.55, col(th.color))
        swing = np.sin(t * 6 + th.z0) * w * 0.3
        for s in (-1, 1):
            cv2.line(img, (int((x1 + x2) / 2), int(y1 + h * 0.55)), (int((x1 + x2) / 2 + s * swing), int(y2)),
                     col((50, 40, 40)), max(1, int(w * 0.25)))
    elif th.cls == 3:  # cyclist from behind: wheel, rider, head
        rect(x1 + w * 0.4, y1 + h * 0.55, x2 - w * 0.4, y2, col((20, 20, 20)))
        rect(x1, y1 + h * 0.5, x2, y1 + h * 0.56, col((40, 40, 40)))
        rect(x1 + w * 0.15, y1 + h * 0.12, x2 - w * 0.15, y1 + h * 0.55, col(th.color))
        cv2.circle(img, (int((x1 + x2) / 2), int(y1 + h * 0.07)), max(1, int(h * 0.07)), col((60, 160, 230)), -1)
        lamp((x1 + x2) / 2, y1 + h * 0.6, max(1.0, w * 0.1), (30, 30, 230), 0.5)
    elif th.cls == 4:  # traffic light housing on a pole
        pole_x = (x1 + x2) / 2
        cv2.line(img, (int(pole_x), int(y2)), (int(pole_x), int(y2 + FOCAL * (4.0 - 0.3) / z)), col((50, 50, 50)),
                 max(1, int(w * 0.2)))
        rect(x1, y1, x2, y2, col(th.color))
        for k, c in enumerate(((40, 40, 255), (40, 200, 255), (60, 220, 60))):
            on = k == th.state
            py = y1 + h * (0.2 + 0.3 * k)
            cv2.circle(img, (int(pole_x), int(py)), max(1, int(w * 0.3)), col(c if on else (40, 40, 40),
                                                                                1.0 if on else light), -1)
            if on:
                lamp(pole_x, py, max(1.0, w * 0.35), c, 1.0)


# --------------------------------------------------------------------------------------------------
# Microphone
# --------------------------------------------------------------------------------------------------


def _siren_hz(pattern: str, t: np.ndarray, rate: float) -> np.ndarray:
    """The siren's emitted fundamental: wail (slow sweep), yelp (fast sweep), hi-lo (two tones)."""
    if pattern == "wail":
        return 700 + 600 * (0.5 - 0.5 * np.cos(2 * np.pi * t / (4.5 * rate)))
    if pattern == "yelp":
        return 700 + 600 * ((t / (0.33 * rate)) % 1.0)
    return np.where((t / (0.55 * rate)) % 2 < 1, 600.0, 780.0)


def render_audio(sc: Scene, masked: bool = False, rain: bool = False) -> dict[str, np.ndarray]:
    """The scene's microphone track, [0, duration]: ``mix`` and its parts ``noise``, ``siren``, ``horn``.

    Noise: engine harmonics at the ego speed's rpm, road rumble and wind growing with speed; ``masked``
    adds broadband noise (a truck alongside, windows down; the siren's SNR drops by 3-10 dB) and ``rain`` rain hiss. Siren:
    pattern, Doppler shift from the source's radial speed, level falling as 1/distance."""
    rng = np.random.default_rng(sc.seed + 77)
    n = int(sc.duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f_eng = 25 + 1.6 * sc.speed
    engine = sum(np.sin(2 * np.pi * f_eng * k * t + rng.uniform(0, 6)) / k for k in range(1, 7))
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(401) / 401, mode="same")
    brown /= np.std(brown) + 1e-9
    wind = rng.normal(0, 1, n)
    wind = np.convolve(wind, np.ones(4) / 4, mode="same")
    road_level = 0.01 * (sc.speed / 10) ** 1.5
    noise = 0.006 * engine + road_level * brown + 0.002 * (sc.speed / 10) ** 2 * wind
    if masked:
        extra = np.convolve(rng.normal(0, 1, n), np.ones(3) / 3, mode="same")
        noise = noise + extra * 5.0 * np.sqrt(np.mean(noise ** 2))
    if rain:
        noise = noise + 0.01 * rng.normal(0, 1, n) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    siren = np.zeros(n)
    if sc.siren is not None:
        s = sc.siren
        z = s["z0"] + s["vz"] * t
        r = np.sqrt(s["x"] ** 2 + z ** 2 + 1.0)
        v_radial = np.gradient(r, t)  # positive: moving away
        f = _siren_hz(s["pattern"], t, 1.0 + 0.1 * ((sc.seed % 7) - 3) / 3) * SOUND_SPEED / (SOUND_SPEED + v_radial)
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        tone = np.sin(phase) + 0.45 * np.sin(2 * phase) + 0.3 * np.sin(3 * phase) + 0.15 * np.sin(5 * phase)
        env = np.clip((t - s["onset"]) / 0.3, 0, 1)
        siren = s["level"] * tone * env / np.maximum(r, 5.0)
    horn = np.zeros(n)
    for hn in sc.horns:
        on = (t >= hn["t"]) & (t < hn["t"] + hn["dur"])
        ph = 2 * np.pi * hn["f"] * t
        tone = np.sin(ph) + 0.8 * np.sin(ph * 1.26) + 0.4 * np.sin(2 * ph) + 0.3 * np.sin(2.52 * ph)
        ramp = np.clip(np.minimum(t - hn["t"], hn["t"] + hn["dur"] - t) / 0.02, 0, 1)
        horn += 1.2 * tone * on * ramp / hn["dist"]
    mix = noise + siren + horn
    peak = np.max(np.abs(mix))
    gain = 0.99 / peak if peak > 0.99 else 1.0  # the microphone chain's AGC keeps it in range
    return {k: (v * gain).astype(np.float32) for k, v in (("mix", mix), ("noise", noise), ("siren", siren),
                                                          ("horn", horn))}


def late_fusion(fusion: dict, a, v):
    """The late-fusion score of "emergency vehicle approaching" (driving_fusion.json, fitted by
    benchmarks/eval_driving.py): the smoothed siren probability ``a`` and the smoothed best emergency-vehicle
    box score ``v``, each calibrated to P(event) by its own logistic, combined as a noisy OR, so either
    modality alone can raise the alarm (a siren behind a truck, a light bar in masking noise) and both
    agreeing raise it sooner. The demo and the evaluation both decide with this one function."""
    (wa, ba), (wv, bv) = fusion["calibration"]["audio"], fusion["calibration"]["camera"]
    pa = 1 / (1 + np.exp(-(wa * np.asarray(a, float) + ba)))
    pv = 1 / (1 + np.exp(-(wv * np.asarray(v, float) + bv)))
    return 1 - (1 - pa) * (1 - pv)


def window_truth(parts: dict[str, np.ndarray], t_end: float, window_s: float = 1.0) -> tuple[int, float]:
    """The audio label of the window ending at t_end (siren > horn > none) and the siren's SNR in it (dB;
    -inf without a siren). A siren counts from 0.3 s in the window, a horn from 0.2 s."""
    b = int(round(t_end * SAMPLE_RATE))
    a = max(0, b - int(window_s * SAMPLE_RATE))
    s, h, nz = parts["siren"][a:b], parts["horn"][a:b], parts["noise"][a:b]
    siren_on = np.count_nonzero(np.abs(s) > 1e-6) / SAMPLE_RATE
    horn_on = np.count_nonzero(np.abs(h) > 1e-6) / SAMPLE_RATE
    snr = -np.inf
    if siren_on > 0:
        active = np.abs(s) > 1e-6
        snr = float(10 * np.log10(np.mean(s[active] ** 2) / (np.mean(nz ** 2) + 1e-12) + 1e-12))
    label = 1 if siren_on >= 0.3 else 2 if horn_on >= 0.2 else 0
    return label, snr
