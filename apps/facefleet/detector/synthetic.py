"""The offline `synthetic:` camera: a generated scene whose ground truth is known.

A synthetic test scene, not a camera: a few persons enter a room, move across it and leave at
planned frames. Each person is made from the one bundled public-domain portrait (see
`facefleet/assets/SOURCES.md`) with a look of their own: hair and clothes repainted in one of
`len(LOOKS)` colour pairs, another skin tone, a wider or narrower face, mirrored or not, and a
size of their own; YuNet and the Haar cascade both detect every look (tests/detector). Two
horizontal lanes keep them apart, and no more than two are ever visible at once, so the number of
distinct persons a tracker should report equals `persons` (up to `len(LOOKS)` persons look
different; more repeat the looks). Everything is a pure function of the parameters: the same URI
gives the same frames on every machine.

URI: `synthetic:?persons=8&seconds=40&fps=15&size=640x480&seed=0` (every parameter optional;
these are the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from urllib.parse import parse_qsl

import cv2
import numpy as np

from facefleet.detector.geometry import Box, Image

SCHEME = "synthetic:"
FACE_ASSET = "astronaut_face.jpg"
#: Where the face sits in the asset, as fractions (x, y, w, h) of its size (measured with YuNet).
FACE_IN_TILE = (0.245, 0.24, 0.525, 0.54)
#: Precomputed sensor-noise frames, cycled, so generating a frame costs little.
NOISE_FRAMES = 4
NOISE_SIGMA = 3.0


@dataclass(frozen=True)
class Look:
    """How one person differs from the portrait: hair and clothes colour (OpenCV HSV: hue
    0..180, saturation and value 0..255; the shading of the original is kept) and the gains of
    the skin (B, G, R)."""

    hair: tuple[int, int, int]
    clothes: tuple[int, int, int]
    skin: tuple[float, float, float]


LOOKS = (
    Look(hair=(0, 0, 30), clothes=(0, 0, 0), skin=(1.0, 1.0, 1.0)),
    Look(hair=(15, 150, 70), clothes=(120, 200, 200), skin=(0.62, 0.7, 0.85)),
    Look(hair=(10, 200, 150), clothes=(60, 200, 160), skin=(0.5, 0.56, 0.68)),
    Look(hair=(20, 90, 140), clothes=(0, 210, 200), skin=(0.9, 0.95, 1.1)),
    Look(hair=(0, 0, 120), clothes=(25, 200, 230), skin=(0.8, 0.78, 0.82)),
    Look(hair=(5, 170, 110), clothes=(150, 150, 170), skin=(0.58, 0.64, 0.8)),
    Look(hair=(25, 120, 40), clothes=(100, 60, 230), skin=(1.05, 1.0, 0.95)),
    Look(hair=(170, 90, 60), clothes=(10, 120, 90), skin=(0.7, 0.8, 0.95)),
)


@dataclass(frozen=True)
class SceneParams:
    persons: int = 8
    seconds: float = 40.0
    fps: float = 15.0
    width: int = 640
    height: int = 480
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.persons <= 50:
            raise ValueError(f"persons must be 0..50 (got {self.persons})")
        if not 0 < self.seconds <= 24 * 3600:
            raise ValueError(f"seconds must be positive (got {self.seconds})")
        if not 0 < self.fps <= 240:
            raise ValueError(f"fps must be 0..240 (got {self.fps})")
        if not (160 <= self.width <= 4096 and 120 <= self.height <= 4096):
            raise ValueError(f"size must be 160x120..4096x4096 (got {self.width}x{self.height})")

    @property
    def frame_count(self) -> int:
        return max(1, round(self.seconds * self.fps))

    @classmethod
    def from_uri(cls, uri: str) -> SceneParams:
        """Parse `synthetic:[?]key=value&...`; raises ValueError naming the bad parameter."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"not a synthetic source: {uri!r}")
        query = uri[len(SCHEME) :].lstrip("?")
        values: dict[str, int | float] = {}
        for key, text in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            try:
                if key == "size":
                    width, _, height = text.lower().partition("x")
                    values["width"], values["height"] = int(width), int(height)
                elif key in ("persons", "seed"):
                    values[key] = int(text)
                elif key in ("seconds", "fps"):
                    values[key] = float(text)
                else:
                    raise KeyError(key)
            except KeyError:
                raise ValueError(
                    f"unknown synthetic parameter {key!r} (persons, seconds, fps, size, seed)"
                ) from None
            except ValueError:
                raise ValueError(f"synthetic parameter {key}: bad value {text!r}") from None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Person:
    """One person's appearance and path: visible from `first_frame` to `last_frame`
    (inclusive), its tile moving linearly from `start` to `end` (top-left corners)."""

    index: int
    first_frame: int
    last_frame: int
    start: tuple[int, int]
    end: tuple[int, int]
    tile_size: tuple[int, int]
    mirrored: bool
    look: Look

    def visible(self, frame: int) -> bool:
        return self.first_frame <= frame <= self.last_frame

    def origin(self, frame: int) -> tuple[int, int]:
        span = max(1, self.last_frame - self.first_frame)
        t = (frame - self.first_frame) / span
        x = self.start[0] + (self.end[0] - self.start[0]) * t
        y = self.start[1] + (self.end[1] - self.start[1]) * t
        return round(x), round(y)

    def face_box(self, frame: int) -> Box:
        x, y = self.origin(frame)
        tw, th = self.tile_size
        fx, fy, fw, fh = FACE_IN_TILE
        if self.mirrored:
            fx = 1.0 - fx - fw
        return round(x + fx * tw), round(y + fy * th), round(fw * tw), round(fh * th)


def plan_persons(params: SceneParams, rng: np.random.Generator) -> list[Person]:
    """Staggered entries, each person visible for 1.8 entry spacings: at most two at once,
    alternating between the upper and the lower half of the frame."""
    n, frames = params.persons, params.frame_count
    spacing = frames / (n + 1)
    lane_h = params.height // 2
    aspect = 170 / 200  # width / height of the asset
    persons = []
    for i in range(n):
        tile_h = int(lane_h * rng.uniform(0.55, 0.85))
        tile_w = int(tile_h * aspect * rng.uniform(0.88, 1.12))
        lane_top = (i % 2) * lane_h
        y0 = lane_top + int(rng.uniform(0, lane_h - tile_h))
        y1 = lane_top + int(rng.uniform(0, lane_h - tile_h))
        room = params.width - tile_w
        left, right = int(rng.uniform(0, room * 0.3)), int(rng.uniform(room * 0.7, room))
        x0, x1 = (left, right) if i % 2 == 0 else (right, left)
        first = round(spacing * (i + 0.1))
        last = min(frames - 1, first + max(1, round(spacing * 1.8)) - 1)
        persons.append(
            Person(
                index=i,
                first_frame=first,
                last_frame=last,
                start=(x0, y0),
                end=(x1, y1),
                tile_size=(tile_w, tile_h),
                mirrored=i % 2 == 1,
                look=LOOKS[(i + params.seed) % len(LOOKS)],
            )
        )
    return persons


def load_face_asset() -> Image:
    data = resources.files("facefleet").joinpath("assets", FACE_ASSET).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot decode the bundled asset {FACE_ASSET}")
    return image


class Portrait:
    """The bundled portrait and where its hair, clothes and skin are (soft masks, 0..1)."""

    def __init__(self, image: Image) -> None:
        self.image = image
        height, width = image.shape[:2]
        self.hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        rows, cols = np.mgrid[0:height, 0:width]
        face = ((cols - 0.5 * width) / (0.27 * width)) ** 2 + (
            (rows - 0.56 * height) / (0.29 * height)
        ) ** 2 <= 1
        hue, saturation, value = (self.hsv[..., k] for k in range(3))
        backdrop = (saturation < 40) & (value > 150)
        skin_coloured = (hue < 25) & (saturation > 50) & (value > 110)
        hair = (rows < 0.62 * height) & ~face & ~backdrop & (value > 40)
        clothes = (rows > 0.7 * height) & ~face & ~backdrop & ~hair & ~skin_coloured
        skin = ~hair & ~clothes & ~backdrop
        self.hair, self.clothes, self.skin = (self._soft(m) for m in (hair, clothes, skin))

    @staticmethod
    def _soft(mask: Image) -> Image:
        soft: Image = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
        return soft[:, :, None]

    def _painted(self, hsv: tuple[int, int, int]) -> Image:
        pixel = np.array([[hsv]], np.uint8)
        colour = cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        shade = self.hsv[..., 2:3].astype(np.float32) / 255.0
        painted: Image = colour * (0.45 + 0.9 * shade)
        return painted

    def dressed(self, look: Look) -> Image:
        """The portrait in `look`, as float32 BGR."""
        out = self.image.astype(np.float32)
        out = out * (1 - self.skin) + out * np.array(look.skin, np.float32) * self.skin
        for mask, colour in ((self.hair, look.hair), (self.clothes, look.clothes)):
            out = out * (1 - mask) + self._painted(colour) * mask
        clipped: Image = np.clip(out, 0, 255)
        return clipped


def make_background(width: int, height: int, rng: np.random.Generator) -> Image:
    """A plain room: a wall gradient, a floor band and a few soft furniture blocks."""
    wall_top, wall_bottom = rng.uniform(120, 200, size=3), rng.uniform(90, 160, size=3)
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    image = wall_top * (1 - rows) + wall_bottom * rows
    image = np.repeat(image, width, axis=1)
    floor = int(height * 0.85)
    image[floor:] = rng.uniform(50, 100, size=3)
    for _ in range(3):
        w, h = int(width * rng.uniform(0.1, 0.25)), int(height * rng.uniform(0.2, 0.5))
        x, y = int(rng.uniform(0, width - w)), int(rng.uniform(0, floor - h))
        image[y : y + h, x : x + w] = rng.uniform(60, 220, size=3)
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigmaX=max(width, height) / 100)
    return np.clip(blurred, 0, 255).astype(np.uint8)


def head_mask(width: int, height: int) -> Image:
    """A soft ellipse around head and shoulders: the alpha of a pasted person."""
    mask = np.zeros((height, width), np.float32)
    center = (width // 2, int(height * 0.5))
    axes = (int(width * 0.46), int(height * 0.48))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    soft = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(2.0, width / 30))
    return soft[:, :, None]


class SyntheticScene:
    """Frames and ground-truth face boxes of one parameter set."""

    def __init__(self, params: SceneParams) -> None:
        self.params = params
        rng = np.random.default_rng(params.seed)
        self.persons = plan_persons(params, rng)
        background = make_background(params.width, params.height, rng)
        noise = rng.normal(0.0, NOISE_SIGMA, size=(NOISE_FRAMES, params.height, params.width, 1))
        self._noise: Image = noise.astype(np.float32)
        self._backgrounds = [
            np.clip(background + self._noise[k], 0, 255).astype(np.uint8)
            for k in range(NOISE_FRAMES)
        ]

    @cached_property
    def _tiles(self) -> list[tuple[Image, Image]]:
        portrait = Portrait(load_face_asset())
        tiles = []
        for person in self.persons:
            dressed = portrait.dressed(person.look)
            tile = cv2.resize(dressed, person.tile_size, interpolation=cv2.INTER_AREA)
            if person.mirrored:
                tile = cv2.flip(tile, 1)
            tiles.append((tile, head_mask(*person.tile_size)))
        return tiles

    def frame(self, index: int) -> Image:
        """The noisy background with every visible person blended in (and noised alike)."""
        k = index % NOISE_FRAMES
        image: Image = self._backgrounds[k].copy()
        for person, (tile, alpha) in zip(self.persons, self._tiles):
            if not person.visible(index):
                continue
            x, y = person.origin(index)
            h, w = tile.shape[:2]
            region = image[y : y + h, x : x + w].astype(np.float32)
            noisy_tile = tile + self._noise[k, y : y + h, x : x + w]
            blended = noisy_tile * alpha + region * (1 - alpha)
            image[y : y + h, x : x + w] = np.clip(blended, 0, 255).astype(np.uint8)
        return image

    def face_boxes(self, index: int) -> list[Box]:
        """Ground truth: the face box of every person visible in frame `index`."""
        return [p.face_box(index) for p in self.persons if p.visible(index)]
