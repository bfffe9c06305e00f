"""Text burned into the pixels: found with OCR, masked, and checked again before the flag says NO.

Ultrasound, secondary captures, scanned documents and many radiographs carry text in the pixels
(patient name, ID, dates, the institution). Which of it is harmless cannot be known from pixels
alone, so every text region found is masked (filled with the image's darkest value): overlays
(regions that do not change across frames) in every frame, the rest in the frames where it was
found. The masked frames are read again and what is found then is masked too, for a few rounds;
``cleared`` is True only when a read finds no confidently read word outside the masks. What OCR
does not find, it cannot mask: the README says so, and objects that cannot be cleared are
quarantined by the caller.

OCR is Tesseract (Debian's ``tesseract-ocr``), run on binarised copies of each
frame (text on an ultrasound or a radiograph is drawn near full brightness, over speckle that a
plain OCR pass reads as a carpet of junk words), enlarged so small overlay fonts are legible.
No maintained library detects text in DICOM pixels without heavy dependencies (presidio's image
redactor pulls spaCy models and an image stack and runs the same Tesseract); this module is the
glue around it: frames to OCR input, boxes back to pixel coordinates, masking of stored values.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, typed_dicom_errors
from medical_data.errors import MedicalDataError
from medical_data.pixels import decode_frames, render


@dataclass(frozen=True, order=True)
class Box:
    """A region of one frame, in pixel rows and columns (``bottom`` and ``right`` exclusive)."""

    top: int
    left: int
    bottom: int
    right: int

    def inside(self, other: Box) -> bool:
        return (
            self.top >= other.top
            and self.left >= other.left
            and self.bottom <= other.bottom
            and self.right <= other.right
        )


@dataclass(frozen=True)
class OcrSettings:
    """How text is looked for. The defaults were tuned on synthetic ultrasound and secondary captures."""

    thresholds: tuple[float, ...] = (0.6, 0.85)
    """Binarisation levels, as fractions of the frame's display range; each level is one OCR pass.
    Measured on synthetic ultrasound (text of 10-18 px, on black and over speckle): 0.6 and 0.85
    together found every word; 0.5 read speckle as hundreds of words."""
    scale: int = 2
    """Enlargement before OCR (overlay fonts are often 8-12 pixels high, below Tesseract's comfort)."""
    min_confidence: float = 0.0
    """Words of two or more letters and digits count from this confidence (0-100). Tesseract gives
    correctly read overlay text confidences as low as 0, so by default every such word counts."""
    single_character_confidence: float = 85.0
    """A one-character word (a laterality marker "L") counts only at this confidence."""
    padding: int = 3
    """Pixels added above and below every word found before it is masked; left and right, the
    word's height (about a character), as OCR often misses a word's first or last letter."""
    min_one_colour_fraction: float = 0.4
    """A word counts as drawn text when this share of its bright pixels lie within
    ``colour_tolerance`` levels of one value (measured: overlay text 0.5-1.0; speckle words 0.1-0.37,
    median 0.2; Doppler colour up to 0.75, and masked with the text)."""
    sure_confidence: float = 75.0
    """A word of three or more letters and digits read this confidently counts whatever its colours
    (anti-aliased screen text spreads over many levels; no speckle word read this well was seen)."""
    colour_tolerance: int = 3
    """Grey levels either side of the commonest one (lossy compression rings around strokes)."""
    min_height: int = 6
    """Words lower than this many pixels are speckle (legible overlay text is 7 pixels or more)."""
    max_height: int = 80
    """Words taller than this are Tesseract joining anatomy into one giant "word", not overlay text."""
    border: int = 12
    """White margin added around the frame for OCR (Tesseract misses text that touches the edge)."""
    max_rounds: int = 3
    """Reads after the first before an object is called not cleared."""
    confirm_confidence: float = 60.0
    """Every word found is masked, but another round is read only while a round finds a word read
    at least this confidently: masking changes how Tesseract segments the anatomy around the masks,
    and in moving anatomy it then reads a few new junk words per round, all below 60 in the real
    echo cine of deid-data, while overlay text is mostly read above 80."""
    static_tolerance: int = 8
    """A region whose grey levels vary by at most this much across frames is an overlay, masked in
    every frame; elsewhere a region is masked in the frames where it was found."""
    max_frames: int = 256
    """Distinct frames read per object; more is refused (quarantined) rather than half-checked."""
    max_level_passes: int = 3
    """Histogram-spike grey levels read as their own masks (dim or mid-grey drawn text)."""
    min_level_pixels: int = 40
    """A spike needs this many pixels (a short word in a small font has about a hundred)."""
    spike_ratio: float = 6.0
    """How far a level's count must stand above its neighbours' median to count as drawn."""
    shrink_from: int = 400
    """Frames whose shorter side is at least this are also read shrunk (very large text)."""
    shrink: int = 4
    """The shrink factor of that pass."""
    max_decoded_bytes: int = 2 * 1024**3
    """Rendering more than this (frames x rows x columns x channels x 4 bytes) for OCR is refused (quarantined)."""

    def __post_init__(self) -> None:
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError("thresholds must be fractions between 0 and 1")
        if self.scale < 1 or self.max_rounds < 1 or self.max_frames < 1 or self.padding < 0 or self.border < 0:
            raise ValueError("scale, rounds and frames must be positive; padding and border not negative")


class PixelTextError(MedicalDataError):
    """The pixels could not be checked for text (no OCR engine, too many frames)."""

    code = "pixel_text_unchecked"


@dataclass(frozen=True)
class RedactionResult:
    """What redaction did (counts only: the text read is never kept)."""

    regions: int
    """Text regions masked (an overlay masked in every frame counts once)."""
    frames_checked: int
    """Distinct frames read."""
    rounds: int
    """OCR reads of every distinct frame (the first, and one after each round of masking)."""
    cleared: bool
    """True when the last read found no confidently read text outside the masks (what it found is masked)."""


TESSERACT_TIMEOUT_S = 60


@functools.cache
def ocr_available() -> bool:
    """Whether the Tesseract binary is installed."""
    return shutil.which("tesseract") is not None


def _alphanumeric(text: str) -> int:
    return sum(character.isalnum() for character in text)


def _qualifies(text: str, confidence: float, settings: OcrSettings) -> bool:
    alphanumeric = sum(character.isalnum() for character in text)
    if alphanumeric >= 2:
        return confidence >= settings.min_confidence
    return alphanumeric == 1 and confidence >= settings.single_character_confidence


def _drawn_in_one_colour(gray: np.ndarray, foreground: np.ndarray, box: Box, settings: OcrSettings) -> bool:
    """Whether the bright pixels of a word share one intensity, as drawn text does and speckle does not.

    Scanners and screen captures draw overlay text in one colour; Tesseract also reads speckle and
    Doppler colour as short words, but their bright pixels spread over a range of intensities.
    """
    values = gray[box.top : box.bottom, box.left : box.right][foreground[box.top : box.bottom, box.left : box.right]]
    if values.size == 0:
        return False
    histogram = np.bincount(values, minlength=256)
    mode, spread = int(histogram.argmax()), settings.colour_tolerance
    share = histogram[max(0, mode - spread) : mode + spread + 1].sum() / values.size
    return share >= settings.min_one_colour_fraction


def _tesseract_words(png: bytes) -> list[tuple[int, int, int, int, float, str]]:
    """(left, top, width, height, confidence, text) of every word Tesseract reads in a PNG.

    The command is run directly rather than through pytesseract, which cannot give the process an
    environment: Tesseract's OpenMP threads, left at their default, spin on two cores and cost four
    times the CPU (OMP_THREAD_LIMIT=1 measured 0.15 s against 0.60 s per pass here).
    """
    environment = {"OMP_THREAD_LIMIT": "1", "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
    try:
        completed = subprocess.run(
            ["tesseract", "stdin", "stdout", "--psm", "11", "tsv"],
            input=png,
            capture_output=True,
            timeout=TESSERACT_TIMEOUT_S,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PixelTextError(f"OCR took longer than {TESSERACT_TIMEOUT_S} s on one frame") from None
    except OSError as exc:
        raise PixelTextError(f"OCR could not run ({type(exc).__name__})") from None
    if completed.returncode != 0:
        raise PixelTextError(f"OCR failed (tesseract exit status {completed.returncode})")
    words = []
    for line in completed.stdout.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) != 12 or fields[0] != "5" or not fields[11].strip():
            continue  # level 5 rows are words; the others are blocks, lines and empty cells
        left, top, width, height = (int(value) for value in fields[6:10])
        words.append((left, top, width, height, float(fields[10]), fields[11].strip()))
    return words


@dataclass(frozen=True, order=True)
class TextRegion:
    """A word found in a frame: where (padded for masking), and whether it was read confidently."""

    box: Box
    confident: bool


def find_text(gray: np.ndarray, settings: OcrSettings = OcrSettings()) -> list[TextRegion]:
    """Words Tesseract finds in one frame, as padded boxes to mask.

    Args:
        gray: (rows, columns) uint8, 255 the brightest.

    Raises:
        PixelTextError: Tesseract is not installed, failed or timed out.
    """
    if not ocr_available():
        raise PixelTextError("OCR (tesseract-ocr) is not installed, so pixel text cannot be checked")
    from PIL import Image

    rows, columns = gray.shape
    low, high = int(gray.min()), int(gray.max())
    if high - low < 16:
        return []  # a flat frame holds no legible text
    regions: list[TextRegion] = []
    for foreground, shrink in _binaries(gray, low, high, settings):
        image = Image.fromarray(np.where(foreground, 0, 255).astype(np.uint8))
        if shrink > 1:  # very large text (scanned forms, screen captures): Tesseract reads it smaller
            image = image.resize((max(1, columns // shrink), max(1, rows // shrink)), Image.Resampling.BOX)
            image = image.point(lambda value: 0 if value < 160 else 255)
        image = _padded_image(image, settings.border)
        factor = settings.scale if shrink == 1 else 1
        if factor > 1:  # dark text on white, enlarged: what Tesseract reads best
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        for left, top, width, height, confidence, text in _tesseract_words(buffer.getvalue()):
            top, left = (top // factor - settings.border) * shrink, (left // factor - settings.border) * shrink
            bottom, right = top + -(-height // factor) * shrink, left + -(-width // factor) * shrink
            word = Box(max(0, top), max(0, left), min(rows, bottom), min(columns, right))
            if _is_text(gray, foreground, word, text, confidence, settings, large=shrink > 1):
                confident = confidence >= settings.confirm_confidence
                regions.append(TextRegion(_padded(word, settings.padding, rows, columns), confident))
    return regions


def _padded_image(image: object, border: int) -> object:
    """A margin in the colour of the image's own edges (a white frame round a black page hides its text)."""
    from PIL import ImageOps

    pixels = np.asarray(image)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = 0 if np.count_nonzero(edges == 0) > edges.size // 2 else 255
    return ImageOps.expand(image, border=border, fill=fill)  # type: ignore[arg-type]


def _binaries(gray: np.ndarray, low: int, high: int, settings: OcrSettings) -> list[tuple[np.ndarray, int]]:
    """Foreground masks to read, each with its shrink factor.

    - Thresholds at fractions of the frame's range: bright overlay text over anatomy and speckle.
    - One mask per grey level drawn as a spike in the histogram below those thresholds: text drawn in
      a dim or mid grey, which a bright structure in the same frame would push under every threshold.
      Speckle and anatomy spread over many levels; drawn text shares one.
    - The first threshold again, shrunk, for frames large enough to hold text taller than
      ``max_height`` (Tesseract misses very large glyphs).
    """
    masks = [(gray >= low + fraction * (high - low), 1) for fraction in settings.thresholds]
    lowest = low + min(settings.thresholds) * (high - low)
    for level in _drawn_levels(gray, settings)[: settings.max_level_passes]:
        if level < lowest:
            masks.append((np.abs(gray.astype(np.int16) - level) <= settings.colour_tolerance, 1))
    if min(gray.shape) >= settings.shrink_from:
        masks.append((masks[0][0], settings.shrink))
    return masks


def _drawn_levels(gray: np.ndarray, settings: OcrSettings) -> list[int]:
    """Grey levels that stand out of the histogram as spikes (the commonest, the background, excluded)."""
    histogram = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    background = int(histogram.argmax())
    spikes = []
    for level in range(1, 255):
        count = histogram[level]
        if level == background or count < settings.min_level_pixels:
            continue
        neighbours = np.concatenate(
            [histogram[max(0, level - 6) : max(0, level - 2)], histogram[level + 3 : level + 7]]
        )
        if count >= settings.spike_ratio * (float(np.median(neighbours)) + 1.0):
            spikes.append((count, level))
    return [level for _, level in sorted(spikes, reverse=True)]


def _is_text(
    gray: np.ndarray,
    foreground: np.ndarray,
    word: Box,
    text: str,
    confidence: float,
    settings: OcrSettings,
    large: bool = False,
) -> bool:
    height = word.bottom - word.top
    if large:  # the shrunk pass: only confidently read words taller than the other passes take
        return height > settings.max_height and confidence >= settings.sure_confidence and _alphanumeric(text) >= 3
    if not settings.min_height <= height <= settings.max_height or not _qualifies(text, confidence, settings):
        return False
    if confidence >= settings.sure_confidence and sum(c.isalnum() for c in text) >= 3:
        return True
    return _drawn_in_one_colour(gray, foreground, word, settings)


def _padded(word: Box, padding: int, rows: int, columns: int) -> Box:
    """The word grown by ``padding`` rows, and by its height (about a character) left and right."""
    side = max(padding, word.bottom - word.top)
    return Box(
        max(0, word.top - padding),
        max(0, word.left - side),
        min(rows, word.bottom + padding),
        min(columns, word.right + side),
    )


def _luminance(frames: np.ndarray) -> np.ndarray:
    """(frames, rows, columns, channels) in [0, 1] to uint8 grey; the brightest channel, so coloured text shows."""
    return np.round(frames.max(axis=-1) * 255.0).astype(np.uint8)


def _full_range_view(dataset: Dataset, gray: np.ndarray, limits: DicomLimits) -> list[np.ndarray]:
    """Grey stored values over their whole range (uint8, bright up), when the header's window hides some.

    Only a window the header sets can hide drawn text on purpose-built displays; the robust window
    used otherwise keeps the extremes where overlay text is drawn.
    """
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1 or str(dataset.get("PhotometricInterpretation", "")) not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        return []
    if "WindowCenter" not in dataset and "VOILUTSequence" not in dataset:
        return []
    stored, _ = decode_frames(dataset, limits)
    values = np.asarray(stored, dtype=np.float32).reshape(gray.shape)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return []
    full = np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
    if str(dataset.PhotometricInterpretation) == "MONOCHROME1":
        full = 255 - full
    sample = (slice(None), slice(None, None, 4), slice(None, None, 4))
    if len(np.unique(full[sample])) <= len(np.unique(gray[sample])):
        return []  # the window keeps every distinction the stored values make
    return [full]


def _frame_groups(frames: np.ndarray) -> dict[int, list[int]]:
    """Identical frames grouped: the first index of each distinct frame to all of its indices."""
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for index in range(frames.shape[0]):
        key = hashlib.blake2b(frames[index].tobytes(), digest_size=16).digest()
        groups.setdefault(first.setdefault(key, index), []).append(index)
    return groups


def _fill(frames: np.ndarray, indices: Iterable[int] | slice, boxes: Iterable[Box], value: object) -> None:
    selection = indices if isinstance(indices, slice) else list(indices)
    for box in boxes:
        frames[selection, box.top : box.bottom, box.left : box.right] = value


@dataclass
class _Masks:
    """Regions masked so far: overlays in every frame, the rest per distinct frame."""

    everywhere: set[Box]
    per_frame: dict[int, set[Box]]

    def covers(self, box: Box, frame: int) -> bool:
        return any(box.inside(old) for old in self.everywhere | self.per_frame[frame])

    @property
    def count(self) -> int:
        return len(self.everywhere | set().union(*self.per_frame.values()))


class PixelTextRedactor:
    """Masks the text OCR finds in an image object's pixels, in place."""

    def __init__(self, settings: OcrSettings = OcrSettings()) -> None:
        self.settings = settings

    @staticmethod
    def available() -> bool:
        return ocr_available()

    @typed_dicom_errors
    def redact(self, dataset: Dataset, limits: DicomLimits = DEFAULT_LIMITS) -> RedactionResult:
        """Find and mask pixel text in ``dataset``; the pixels are rewritten uncompressed when any was found.

        Raises:
            PixelTextError: no OCR engine, more distinct frames than ``settings.max_frames``, or more
                pixels than ``settings.max_decoded_bytes`` to render.
            DicomRejected: the pixels cannot be decoded.

        The frames are read as displayed (the header's window) and, for grey images whose window
        hides part of the stored range, over the whole stored range too: text drawn in values the
        window clips to black or white is still read.
        """
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        rendered_bytes = frames * int(dataset.get("Rows", 0) or 0) * int(dataset.get("Columns", 0) or 0) * samples * 4
        if rendered_bytes > self.settings.max_decoded_bytes:
            raise PixelTextError(f"{frames} frames are too many pixels to check for text at once")
        display = render(dataset, limits=limits).pixels  # (frames, rows, columns, channels) in [0, 1]
        gray = _luminance(display)
        groups = _frame_groups(gray)
        if len(groups) > self.settings.max_frames:
            raise PixelTextError(
                f"{len(groups)} distinct frames, over the {self.settings.max_frames} that are checked for text"
            )
        views = [gray.copy(), *_full_range_view(dataset, gray, limits)]  # masked as found; gray stays as read
        darkest = [int(view.min()) for view in views]
        masks = _Masks(set(), {first: set() for first in groups})
        reads, cleared = 0, False
        while reads <= self.settings.max_rounds and not cleared:
            reads += 1
            confident_text = False
            for first in groups:
                for view in views:
                    for region in find_text(view[first], self.settings):
                        if masks.covers(region.box, first):
                            continue
                        confident_text |= region.confident
                        static = self._is_static(gray, region.box)
                        (masks.everywhere if static else masks.per_frame[first]).add(region.box)
                        for other, value in zip(views, darkest, strict=True):
                            _fill(other, slice(None) if static else groups[first], [region.box], value)
            cleared = not confident_text  # every word this read found is masked; none was read confidently
        if masks.count:
            self._mask_stored(dataset, masks, groups, display, limits)
        return RedactionResult(masks.count, len(groups), reads, cleared)

    def _is_static(self, gray: np.ndarray, box: Box) -> bool:
        if gray.shape[0] == 1:
            return True
        patch = gray[:, box.top : box.bottom, box.left : box.right]
        spread = patch.max(axis=0).astype(np.int16) - patch.min(axis=0)
        return bool(np.mean(spread <= self.settings.static_tolerance) >= 0.9)

    @staticmethod
    def _mask_stored(
        dataset: Dataset, masks: _Masks, groups: dict[int, list[int]], display: np.ndarray, limits: DicomLimits
    ) -> None:
        """Fill the masks in the stored pixel values with the value shown darkest, and store them native."""
        stored, photometric = decode_frames(dataset, limits)  # YBR arrives as RGB
        stored = np.array(stored, copy=True)
        darkest = np.unravel_index(int(np.argmin(display.max(axis=-1))), display.shape[:3])
        fill = stored[darkest]  # a sample tuple for colour, a scalar for grey and palette
        _fill(stored, slice(None), masks.everywhere, fill)
        for first, boxes in masks.per_frame.items():
            _fill(stored, groups[first], boxes, fill)
        bits_stored = int(dataset.get("BitsStored", stored.dtype.itemsize * 8))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # native, little endian from here on
        pixels = stored if frames > 1 else stored[0]
        dataset.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
        if "PlanarConfiguration" in dataset:
            dataset.PlanarConfiguration = 0
