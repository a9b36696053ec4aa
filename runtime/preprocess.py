"""Image decoding and CLIP preprocessing without torch.

The pipeline reproduces transformers' ``CLIPImageProcessor`` step by step (RGB conversion, resize
of the shortest side with PIL bicubic, centre crop, ``x / 255``, per-channel normalisation), so an
exported graph sees the same pixels in serving as its PyTorch original saw in training. It adds
what a service needs and the processor lacks: EXIF orientation, 16-bit and float images scaled
instead of clipped, a pixel limit against decompression bombs, and typed errors that name the
offending input and its index in the batch.

Decoding at the size the model needs (``draft``, on by default): a JPEG is decoded by libjpeg-turbo
at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side still holds ``DRAFT_MARGIN`` times the
resize target, and every resize first box-reduces by an integer factor down to ``REDUCING_GAP``
times the target (Pillow's ``reducing_gap``) before the bicubic filter. A 12 MP phone photo then
costs a fraction of full decoding (figures in docs/export.md, "Images at the size the model
needs"); embeddings stay within cosine 0.999 of full decoding. Images already near the target
size are decoded and resized exactly as ``CLIPImageProcessor`` does either way. ``draft=False``
(or ``"draft": false`` in the manifest's ``preprocessing``, which the server reads too) decodes
every image at full resolution.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import DTypeError, InvalidImageError, ShapeError

#: Anything the runtime accepts as one image.
ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

#: Default pixel limit (width x height) above which an image is refused as a decompression bomb.
#: 64 Mpx is larger than any photo a camera writes, and far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000
#: Every image Pillow decodes is accepted (a 1x1 PNG too: upsampled, as transformers'
#: CLIPImageProcessor does); raise this to refuse tiny images in a deployment that prefers to.
DEFAULT_MIN_SIDE = 1

#: Draft decoding keeps a shorter side of at least this many times the resize target (measured:
#: docs/export.md, "Images at the size the model needs").
DRAFT_MARGIN = 1.0
#: ``reducing_gap`` of the resize when drafting: box-reduce to at least this many times the target
#: before the bicubic filter. 3, Pillow's "indistinguishable from fair resampling" threshold: at 2 a
#: 300 x 200 image resized to a 32 px model moved its embedding to cosine 0.9972 of CLIPImageProcessor's
#: (a random-weight tiny CLIP); at 3, 0.99990-1.0. A 12 MP JPEG drafted to 1/8 is under 2x the target,
#: so this gap does not slow it.
REDUCING_GAP = 3.0

# OpenAI CLIP's normalisation, the default when a manifest does not say otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def source_name(x: Any) -> str | None:
    """A short human name of an input for error messages (a path, or the kind of object)."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"<{len(x)} bytes>"
    if isinstance(x, np.ndarray):
        return f"<array {x.dtype} {tuple(x.shape)}>"
    if isinstance(x, Image.Image):
        return f"<PIL {x.mode} {x.size[0]}x{x.size[1]}>"
    return f"<{type(x).__name__}>"


def _check_pixels(img: Image.Image, max_pixels: int | None, min_side: int, index: int | None, src: str | None):
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise InvalidImageError(
            f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}"
            " (possible decompression bomb; raise max_pixels to accept it)",
            index=index,
            source=src,
        )
    if min(w, h) < min_side:
        raise InvalidImageError(
            f"image is {w}x{h}; the shorter side must be at least {min_side} px", index=index, source=src
        )


def _array_to_image(arr: np.ndarray, index: int | None, src: str | None) -> Image.Image:
    """uint8 (or uint16) HW / HWC array -> PIL image; anything else is a typed error."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise DTypeError(
            f"image arrays must be uint8 (or uint16) HWC, got dtype {arr.dtype}", index=index, source=src
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ShapeError(
            f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {tuple(arr.shape)}",
            index=index,
            source=src,
        )
    if arr.dtype == np.uint16:  # keep the 8 most significant bits, as for 16-bit files
        arr = (arr >> 8).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_8bit_rgb(img: Image.Image, index: int | None, src: str | None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    8-bit modes go through PIL's ``convert("RGB")`` exactly as ``CLIPImageProcessor`` does (so RGBA
    drops alpha, CMYK and palette images use PIL's conversion). 16-bit and 32-bit integer images are
    scaled to 8 bits; PIL's own conversion would clip every value above 255 to white.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)
        # "I" holds 16-bit PNGs too; only scale when the values actually exceed 8 bits
        shift = 8 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 0
        a = np.clip(a >> shift, 0, 255).astype(np.uint8)
        img = Image.fromarray(a, mode="L")
    elif mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise InvalidImageError("float image contains NaN or infinity", index=index, source=src)
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_image(
    x: ImageLike,
    index: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    draft_short: int | None = None,
) -> Image.Image:
    """Decode one image from a path, encoded bytes, a PIL image or a uint8 HWC array.

    Applies the EXIF orientation, checks the pixel limit (of the full image, from its header)
    before decoding the pixels, decodes fully (so a truncated file fails here, not later) and
    returns an 8-bit RGB image.

    Args:
        x: A file path, encoded image bytes, a ``PIL.Image.Image`` or a uint8 array (HxW, HxWx1,
            HxWx3 or HxWx4).
        index: Position of the image in its batch, used in error messages.
        max_pixels: Largest accepted width x height, or ``None`` for no limit of clipq's own (PIL
            still refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS``).
        min_side: Smallest accepted shorter side, in pixels.
        draft_short: Where set, a JPEG file or bytes is decoded at the smallest DCT scale whose
            shorter side is still at least ``draft_short`` (a rotation by EXIF keeps the shorter
            side, so the scale is the same either way); other inputs are decoded whole.

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        InvalidImageError: the file is missing, empty, truncated, corrupt or not an image; the image
            is over the pixel limit or under the minimum size.
        DTypeError: an array that is not uint8/uint16.
        ShapeError: an array that is not HxW[xC] with C in 1, 3, 4.
    """
    src = source_name(x)
    if isinstance(x, np.ndarray):
        img = _array_to_image(x, index, src)
        _check_pixels(img, max_pixels, min_side, index, src)
        return _to_8bit_rgb(img, index, src)
    if isinstance(x, Image.Image):
        img = x
    else:
        if isinstance(x, (str, os.PathLike)):
            path = Path(x)
            if not path.is_file():
                raise InvalidImageError("no such image file", index=index, source=src)
            if path.stat().st_size == 0:
                raise InvalidImageError("image file is empty (0 bytes)", index=index, source=src)
            fp: Any = path
        elif isinstance(x, (bytes, bytearray, memoryview)):
            if len(x) == 0:
                raise InvalidImageError("image bytes are empty", index=index, source=src)
            fp = io.BytesIO(bytes(x))
        else:
            raise InvalidImageError(
                f"unsupported image input type {type(x).__name__}: pass a path, bytes, a PIL image or a"
                " uint8 HxWx3 array",
                index=index,
                source=src,
            )
        try:
            img = Image.open(fp)
        except UnidentifiedImageError as e:
            raise InvalidImageError("not an image (or an unsupported format)", index=index, source=src) from e
        except Image.DecompressionBombError as e:
            raise InvalidImageError(f"decompression bomb refused by PIL: {e}", index=index, source=src) from e
        except OSError as e:
            raise InvalidImageError(f"cannot read image: {e}", index=index, source=src) from e
    # check the declared size before the pixels are decoded: a bomb never reaches load()
    _check_pixels(img, max_pixels, min_side, index, src)
    if draft_short and isinstance(img, JpegImagePlugin.JpegImageFile) and not isinstance(x, Image.Image):
        # Pillow picks the largest scale s in 8, 4, 2, 1 with both sides // s >= the request
        img.draft(None, (int(draft_short), int(draft_short)))
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise InvalidImageError(f"decompression bomb refused by PIL: {e}", index=index, source=src) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL raises OSError("image file is truncated"), SyntaxError for broken headers, ...
        raise InvalidImageError(f"corrupt or truncated image: {e}", index=index, source=src) from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject good pixels
        pass
    return _to_8bit_rgb(img, index, src)


class ImagePreprocessor:
    """Decode, resize, centre-crop and normalise images into a ``float32 [N, 3, S, S]`` batch.

    Matches transformers' ``CLIPImageProcessor`` (``do_convert_rgb``, shortest-edge bicubic
    resize, centre crop, rescale, normalise) to float rounding on 8-bit RGB and greyscale images.

    Args:
        size: Output side S (the crop size).
        mean: Per-channel mean, in [0, 1] units.
        std: Per-channel standard deviation, in [0, 1] units.
        max_pixels: Pixel limit passed to :func:`decode_image` (user-settable).
        shortest_edge: Side the shorter edge is resized to before cropping (default ``size``).
        resample: PIL filter name ("bicubic" as CLIP).
        min_side: Smallest accepted shorter side of an input image.
        draft: Decode and reduce at the size the model needs (see the module docstring); ``False``
            decodes every image at full resolution, as ``CLIPImageProcessor`` does.
        resize: ``"shortest_side"`` (CLIP: shorter side to ``shortest_edge``, centre crop) or ``"squash"``
            (SigLIP's ``SiglipImageProcessor``: the whole image to ``size`` x ``size``, no crop).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        shortest_edge: int | None = None,
        resample: str = "bicubic",
        min_side: int = DEFAULT_MIN_SIDE,
        draft: bool = True,
        resize: str = "shortest_side",
    ) -> None:
        if resize not in ("shortest_side", "squash"):
            raise ValueError(f"resize must be 'shortest_side' or 'squash', got {resize!r}")
        self.squash = resize == "squash"  # SigLIP: the whole image to size x size, no crop
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        self.size = int(size)
        self.shortest_edge = int(shortest_edge or size)
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.resample = resample
        self.draft = bool(draft)
        self._draft_short = int(DRAFT_MARGIN * self.shortest_edge) if self.draft else None
        self._reducing_gap = REDUCING_GAP if self.draft else None
        # fold rescale and normalise into one affine map: (x/255 - mean)/std = x*scale + shift
        mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.mean, self.std = mean_a, std_a
        self._scale = (1.0 / (255.0 * std_a)).astype(np.float32)
        self._shift = (-mean_a / std_a).astype(np.float32)

    @classmethod
    def from_manifest(cls, manifest: Any, **overrides: Any) -> ImagePreprocessor:
        """Build from ``manifest.preprocessing`` (keys size, mean, std, resample, shortest_edge, draft).

        Raises:
            ArtifactError: the manifest has no preprocessing size.
        """
        from .errors import ArtifactError

        p = dict(manifest.preprocessing or {})
        if "size" not in p:
            raise ArtifactError(f"{manifest.root}: manifest.preprocessing has no 'size'")
        kw: dict[str, Any] = {
            "mean": p.get("mean", CLIP_MEAN),
            "std": p.get("std", CLIP_STD),
            "resample": p.get("resample", "bicubic"),
            "shortest_edge": p.get("shortest_edge"),
            "draft": bool(p.get("draft", True)),
            "resize": p.get("resize", "shortest_side"),
        }
        kw.update(overrides)
        return cls(int(p["size"]), **kw)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shortest side to ``shortest_edge`` (bicubic), then centre crop to ``size`` x ``size``."""
        w, h = img.size
        if self.squash:  # SiglipImageProcessor: resize to (size, size), aspect not kept, no crop
            s = self.size
            return img if (w, h) == (s, s) else img.resize((s, s), resample=_RESAMPLE[self.resample],
                                                           reducing_gap=self._reducing_gap)
        # same integer arithmetic as transformers.get_resize_output_image_size(default_to_square=False)
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=_RESAMPLE[self.resample], reducing_gap=self._reducing_gap)
        s = self.size
        if new_w < s or new_h < s:  # only when shortest_edge < size: pad with zeros as transformers does
            canvas = Image.new("RGB", (max(new_w, s), max(new_h, s)))
            canvas.paste(img, ((max(new_w, s) - new_w + 1) // 2, (max(new_h, s) - new_h + 1) // 2))
            img, new_w, new_h = canvas, canvas.size[0], canvas.size[1]
        top, left = (new_h - s) // 2, (new_w - s) // 2
        return img.crop((left, top, left + s, top + s))

    def normalize(self, img: Image.Image) -> np.ndarray:
        """RGB ``size`` x ``size`` image -> float32 [3, S, S]."""
        chw = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return chw * self._scale + self._shift

    def one(self, x: ImageLike, index: int | None = None) -> np.ndarray:
        """Preprocess one image to float32 [3, S, S] (see :func:`decode_image` for errors)."""
        img = decode_image(x, index, self.max_pixels, min_side=self.min_side, draft_short=self._draft_short)
        return self.normalize(self.resize_crop(img))

    def __call__(self, images: ImageLike | Iterable[ImageLike], *, start: int = 0) -> np.ndarray:
        """Preprocess a batch of images to float32 [N, 3, S, S].

        Args:
            images: One image or a sequence of images (paths, bytes, PIL images, uint8 arrays), or
                a uint8 array [N, H, W, C] holding a batch.
            start: Index of the first image in the caller's whole batch (for error messages when
                the caller preprocesses in chunks).

        Returns:
            float32 array [N, 3, size, size].

        Raises:
            InvalidImageError, DTypeError, ShapeError: naming the offending image and its index.
        """
        items = as_image_list(images)
        out = np.empty((len(items), 3, self.size, self.size), dtype=np.float32)
        for i, x in enumerate(items):
            out[i] = self.one(x, start + i)
        return out

    pre = __call__


def as_image_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """Normalise the accepted batch forms into a list of single images.

    A single path/bytes/PIL image becomes a list of one; a 4-D array is split along its first
    axis; a 2-D or 3-D array is one image.

    Raises:
        ShapeError: a numpy array of rank other than 2, 3 or 4.
    """
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ShapeError(f"an image batch array must be [N, H, W, C], got shape {tuple(images.shape)}")
    return list(images)
