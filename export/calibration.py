"""The built-in calibration sample: real photos and natural sentences, never random tensors or ids.

Post-training int8 needs activation ranges from inputs like the ones the graphs will see: random
token ids calibrated clip_text (ViT-B/32 shapes, NNCF int8) to cosine 0.985 against fp32 in the
prototype, on a 2-core Intel Xeon of the Sapphire Rapids class (AMX, AVX512-VNNI); real text keeps it
above 0.998. When the app hands in the user's data (``--data``) that is used; otherwise this
sample: scikit-image's bundled photos (``skimage.data``; no download) with a few crops and flips
each, and a fixed list of captions, questions and prompts per tokenizer kind.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipq.runtime.errors import MissingDependencyError

#: photos shipped inside the scikit-image wheel (the loaders read them without a download)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
          "immunohistochemistry", "moon", "retina", "clock", "page", "text", "brick", "grass", "gravel")

CAPTIONS = (
    "an astronaut in a white space suit in front of the american flag",
    "a cup of coffee on a saucer with a spoon",
    "a ginger tabby cat lying on a blanket and looking at the camera",
    "a rocket standing on the launch pad under a clear sky",
    "a man with a camera on a tripod in a park",
    "old coins of different sizes on a dark table",
    "thousands of distant galaxies in the deep night sky",
    "a stained tissue sample under a microscope",
    "the surface of the moon with many craters",
    "a photograph of the back of a human eye",
    "a round wall clock with black hands",
    "a page of printed text from an old book",
    "a red brick wall",
    "green grass in the sunlight",
    "a close up of grey gravel on a path",
    "a dog running across a sandy beach",
    "two children playing football in the street",
    "a bowl of fresh fruit on a wooden kitchen table",
    "a red double decker bus driving through the city at night",
    "a snowy mountain reflected in a calm lake",
    "a woman riding a bicycle past a row of shops",
    "a plate of pasta with tomato sauce and basil",
    "a black and white photo of a lighthouse by the sea",
    "three birds sitting on a telephone wire",
    "a laptop and a notebook on a desk next to a window",
    "a small boat on a river surrounded by trees",
    "a crowd of people watching a concert",
    "a yellow taxi parked in front of a tall building",
    "a horse grazing in a field at sunset",
    "a slice of chocolate cake with a cherry on top",
    "an empty train station platform early in the morning",
    "a person holding an umbrella in the rain",
)

QUESTIONS = (
    "what color is the cat?", "how many coins are on the table?", "what is the man holding?",
    "is there a flag in the picture?", "what is in the cup?", "where is the rocket?",
    "what time does the clock show?", "what is the wall made of?", "how many birds are there?",
    "what color is the bus?", "is it raining?", "what is the woman riding?", "what animal is in the field?",
    "what is on the plate?", "is the lake frozen?", "what is the person wearing?",
)

PROMPTS = (
    "portrait of an astronaut, highly detailed, studio lighting, 8k",
    "a cozy cup of coffee on a rainy morning, soft focus, film grain",
    "a fluffy ginger cat, watercolor painting, pastel colors",
    "rocket launch at dawn, dramatic clouds, cinematic, wide angle",
    "ancient coins on velvet, macro photography, shallow depth of field",
    "deep space nebula with galaxies, digital art, vibrant",
    "the moon over a quiet village, oil painting, impressionism",
    "a lighthouse in a storm, concept art, trending on artstation",
    "a futuristic city at night, neon lights, cyberpunk",
    "a bowl of fruit, still life, dutch golden age painting",
    "a mountain lake at sunrise, photorealistic, 4k",
    "a red bus in london, vintage postcard style",
    "a horse in a meadow at sunset, golden hour, bokeh",
    "a chocolate cake, food photography, top view",
    "a forest path in autumn, volumetric light, fantasy",
    "a robot reading a book in a library, pixar style",
)

#: tokenizer kind of the manifest -> sentences
TEXTS: dict[str, tuple[str, ...]] = {"clip": CAPTIONS, "lm": QUESTIONS, "prompt": PROMPTS}


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (a.astype(np.float64) * (255.0 / max(float(a.max()), 1.0))).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled photos as RGB uint8 HWC arrays.

    Raises:
        MissingDependencyError: scikit-image is not installed.
    """
    try:
        import skimage.data as data
    except ImportError as e:
        raise MissingDependencyError("scikit-image", "train", "the built-in calibration photos") from e
    out = []
    for name in PHOTOS:
        try:
            out.append(_rgb(getattr(data, name)()))
        except Exception:  # noqa: BLE001 - a scikit-image without that file: use the others
            continue
    if not out:
        raise MissingDependencyError("scikit-image", "train", "the built-in calibration photos")
    return tuple(out)


def augmented(photos: Sequence[np.ndarray], per_photo: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Each photo, then ``per_photo - 1`` random crops (half to full size, some flipped) of it."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for p in photos:
        out.append(p)
        h, w = p.shape[:2]
        for _ in range(per_photo - 1):
            s = rng.uniform(0.5, 0.9)
            ch, cw = max(8, int(h * s)), max(8, int(w * s))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = p[y:y + ch, x:x + cw]
            out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def held_out_photos(n: int = 16, seed: int = 7) -> list[np.ndarray]:
    """Crops of the built-in photos drawn with another seed than the calibration's: views of real
    photos that NNCF's statistics never saw, for the int8 gate of image graphs whose parity samples
    are synthetic (an import without ``--data``).

    Why: synthetic parity images alone let through int8 graphs that lose more on photos. Measured on
    a 2-core AMD EPYC (Zen 5): CLIP ViT-B/32's image tower with NNCF min-max int8 reached cosine
    0.9998 on the synthetic images and 0.9978 on the photos; SmoothQuant 0.9998 / 0.9991.

    Raises:
        MissingDependencyError: scikit-image is not installed.
    """
    return augmented(sample_photos(), 2, seed)[1::2][:n]


@dataclass(kw_only=True)
class CalibrationSample:
    """Images (paths or uint8 arrays) and texts per tokenizer kind, for calibration and timing."""

    images: Sequence[Any] = ()
    texts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    source: str = "built-in"

    @classmethod
    def builtin(cls, per_photo: int = 4, seed: int = 0) -> CalibrationSample:
        """The built-in sample (needs scikit-image)."""
        return cls(images=augmented(sample_photos(), per_photo, seed), texts={k: list(v) for k, v in TEXTS.items()},
                   source=f"built-in: {len(PHOTOS)} scikit-image photos x {per_photo}, fixed sentences")

    @classmethod
    def texts_only(cls) -> CalibrationSample:
        """The sentences alone (images synthetic): enough for timing, where content does not matter."""
        return cls(images=(), texts={k: list(v) for k, v in TEXTS.items()}, source="built-in sentences")

    @classmethod
    def from_inputs(cls, inputs: Any) -> CalibrationSample | None:
        """From :class:`~clipq.export.pipeline.ExportInputs` (calibration split first), or None if empty."""
        if inputs is None:
            return None
        images = list(inputs.calibration_images or inputs.images or ())
        texts = {k: list(v) for k, v in (inputs.calibration_texts or inputs.texts or {}).items() if v}
        if not images and not texts:
            return None
        for k, v in TEXTS.items():  # a data directory without, say, prompts still calibrates them on real text
            texts.setdefault(k, list(v))
        return cls(images=images, texts=texts, source=f"--data: {len(images)} images")
