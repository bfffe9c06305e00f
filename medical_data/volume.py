"""Series to volumes: slices sorted along the slice normal, spacing and orientation in millimetres.

Coordinates are DICOM patient coordinates (LPS). A volume's array is indexed (slice, row, column);
``affine`` maps (slice, row, column, 1) to LPS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from medical_data.dicom_io import typed_dicom_errors
from medical_data.errors import SeriesGeometryError

ORIENTATION_TOLERANCE = 1e-3
UNIFORM_SPACING_TOLERANCE = 0.1  # relative deviation of slice gaps still called uniform


@dataclass(frozen=True)
class SliceGeometry:
    """Where a stack of slices sits in the patient, and how it was ordered."""

    spacing: tuple[float, float, float]
    """(between slices, between rows, between columns) in mm."""
    origin: tuple[float, float, float]
    """ImagePositionPatient of the first slice (LPS, mm)."""
    direction: np.ndarray = field(repr=False)
    """3x3: rows are the row direction, the column direction and the slice normal (LPS unit vectors)."""
    sorted_by: str
    """'position' (along the normal), 'instance_number' (fallback) or 'frame_order'."""
    uniform_spacing: bool
    orientation_known: bool = True
    """False when the header gave no orientation (``direction`` is then the identity, a guess)."""

    @property
    def affine(self) -> np.ndarray:
        """4x4 from (slice, row, column, 1) to LPS millimetres."""
        slice_step, row_step, column_step = self.spacing
        affine = np.eye(4)
        affine[:3, 0] = self.direction[2] * slice_step
        affine[:3, 1] = self.direction[1] * row_step  # moving down a column: along the column direction
        affine[:3, 2] = self.direction[0] * column_step  # moving along a row: along the row direction
        affine[:3, 3] = self.origin
        return affine


PATIENT_LETTERS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
"""PatientOrientation letters as LPS unit vectors (PS3.3 C.7.6.1.1.1)."""


def _orientation(dataset: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient, else a direction built from PatientOrientation (projection radiographs)."""
    values = dataset.get("ImageOrientationPatient")
    if values is not None and len(values) == 6:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    letters = dataset.get("PatientOrientation")
    if letters is None or len(letters) != 2:
        return None
    vectors = []
    for code in letters:  # "LF" is oblique: its first letter is its main direction
        code = str(code).strip().upper()
        if not code or code[0] not in PATIENT_LETTERS:
            return None
        vectors.append(PATIENT_LETTERS[code[0]])
    if vectors[0] == vectors[1] or np.dot(vectors[0], vectors[1]) != 0:
        return None
    return np.asarray(vectors[0] + vectors[1], dtype=np.float64)


def _pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    if spacing is None or len(spacing) != 2:
        return (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def direction_matrix(orientation: np.ndarray) -> np.ndarray:
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    return np.stack([row, column, normal])


@typed_dicom_errors
def sort_slices(datasets: Sequence[Dataset]) -> tuple[list[Dataset], SliceGeometry]:
    """Order single-frame slices of one series geometrically.

    Slices are sorted by ImagePositionPatient projected on the slice normal; when positions or
    orientations are missing, by InstanceNumber.

    Raises:
        SeriesGeometryError: mixed orientations, mixed image sizes, or two slices at one position.
    """
    if not datasets:
        raise SeriesGeometryError("the series has no slices")
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in datasets}
    if len(sizes) > 1:
        raise SeriesGeometryError("slices of the series differ in size")
    row_spacing, column_spacing = _pixel_spacing(datasets[0])
    orientations = [_orientation(ds) for ds in datasets]
    positions = [ds.get("ImagePositionPatient") for ds in datasets]
    have_geometry = all(o is not None for o in orientations) and all(p is not None and len(p) == 3 for p in positions)
    if have_geometry:
        first = orientations[0]
        if any(np.abs(o - first).max() > ORIENTATION_TOLERANCE for o in orientations):  # type: ignore[operator]
            raise SeriesGeometryError("slices of the series differ in orientation")
        direction = direction_matrix(first)  # type: ignore[arg-type]
        points = np.asarray([[float(v) for v in p] for p in positions])  # type: ignore[union-attr]
        distances = points @ direction[2]
        order = np.argsort(distances, kind="stable")
        gaps = np.diff(distances[order])
        if len(datasets) > 1 and np.any(np.abs(gaps) < 1e-4):
            raise SeriesGeometryError("two slices share one position (several echoes or phases in one series)")
        slice_step = float(np.median(gaps)) if len(gaps) else float(datasets[0].get("SliceThickness", 1.0) or 1.0)
        uniform = bool(len(gaps) == 0 or np.max(np.abs(gaps - slice_step)) <= UNIFORM_SPACING_TOLERANCE * slice_step)
        ordered = [datasets[i] for i in order]
        geometry = SliceGeometry(
            (slice_step, row_spacing, column_spacing), tuple(points[order[0]]), direction, "position", uniform
        )
        return ordered, geometry
    ordered = sorted(datasets, key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
    thickness = float(ordered[0].get("SliceThickness", 1.0) or 1.0)
    orientation = orientations[0] if orientations[0] is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    geometry = SliceGeometry(
        (thickness, row_spacing, column_spacing),
        (0.0, 0.0, 0.0),
        direction_matrix(orientation),
        "instance_number",
        True,
        orientation_known=orientations[0] is not None,
    )
    return ordered, geometry


@typed_dicom_errors
def multiframe_geometry(dataset: Dataset) -> tuple[list[int], SliceGeometry]:
    """Frame order and geometry of a multi-frame object.

    Enhanced objects with a plane position per frame are sorted along the normal; others (cine,
    ultrasound loops) keep their acquisition order.
    """
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    measures = (shared.get("PixelMeasuresSequence") or [dataset])[0]
    row_spacing, column_spacing = _pixel_spacing(measures)
    orientation_item = (shared.get("PlaneOrientationSequence") or [dataset])[0]
    orientation = _orientation(orientation_item)
    positions = []
    for frame in per_frame:
        plane = frame.get("PlanePositionSequence")
        if plane and "ImagePositionPatient" in plane[0]:
            positions.append([float(v) for v in plane[0].ImagePositionPatient])
    thickness = float(measures.get("SpacingBetweenSlices", measures.get("SliceThickness", 1.0)) or 1.0)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if orientation is None or len(positions) != len(per_frame) or len(positions) != frames:
        fallback = orientation if orientation is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
        geometry = SliceGeometry(
            (thickness, row_spacing, column_spacing),
            (0.0, 0.0, 0.0),
            direction_matrix(fallback),
            "frame_order",
            True,
            orientation_known=orientation is not None,
        )
        return list(range(frames)), geometry
    direction = direction_matrix(orientation)
    distances = np.asarray(positions) @ direction[2]
    order = [int(i) for i in np.argsort(distances, kind="stable")]
    gaps = np.diff(distances[order])
    step = float(np.median(gaps)) if len(gaps) else thickness
    uniform = bool(len(gaps) == 0 or np.max(np.abs(gaps - step)) <= UNIFORM_SPACING_TOLERANCE * abs(step or 1.0))
    geometry = SliceGeometry(
        (step or thickness, row_spacing, column_spacing), tuple(positions[order[0]]), direction, "position", uniform
    )
    return order, geometry


def _dominant_axis(vector: np.ndarray) -> int:
    return int(np.argmax(np.abs(vector)))


def standard_orientation(pixels: np.ndarray, geometry: SliceGeometry) -> tuple[np.ndarray, SliceGeometry]:
    """Turn in-plane axes to how radiologists read each plane; the geometry follows the pixels.

    Axial and coronal images get the patient's right on the image's left (rows run towards the
    patient's left, +X in LPS); sagittal images get anterior on the left (+Y); columns run towards
    the patient's back in axial images (+Y) and towards the feet otherwise (-Z). An image stored
    with a reversed row or column direction, or turned a quarter, is flipped or transposed so that
    the same anatomy lands on the same pixels. Nothing changes when the header gave no orientation.

    Args:
        pixels: (D, H, W, C) as rendered.

    Returns:
        The pixels, a view when nothing moves, and the geometry whose affine maps their indices.
    """
    if not geometry.orientation_known:
        return pixels, geometry
    row, column, normal = geometry.direction
    slice_step, row_step, column_step = geometry.spacing
    origin = np.asarray(geometry.origin, dtype=np.float64)
    normal_axis = _dominant_axis(normal)
    wanted_row_axis = 1 if normal_axis == 0 else 0  # sagittal: rows run along Y; axial, coronal: along X
    if _dominant_axis(row) != wanted_row_axis:  # a quarter turn: swap rows and columns
        pixels = np.swapaxes(pixels, 1, 2)
        row, column = column, row
        row_step, column_step = column_step, row_step
    height, width = pixels.shape[1], pixels.shape[2]
    if row[_dominant_axis(row)] < 0:  # columns run the wrong way: mirror left and right
        origin = origin + row * column_step * (width - 1)
        row = -row
        pixels = pixels[:, :, ::-1]
    column_axis = _dominant_axis(column)
    wants_positive = column_axis != 2  # down the image: posterior (axial) or inferior (coronal, sagittal)
    if (column[column_axis] > 0) != wants_positive:
        origin = origin + column * row_step * (height - 1)
        column = -column
        pixels = pixels[:, ::-1]
    new_normal = np.cross(row, column)
    if pixels.shape[0] > 1 and np.dot(new_normal, normal) < 0:  # keep slices running along the new normal
        origin = origin + normal * slice_step * (pixels.shape[0] - 1)
        pixels = pixels[::-1]
    standard = SliceGeometry(
        (slice_step, row_step, column_step),
        (float(origin[0]), float(origin[1]), float(origin[2])),
        np.stack([row, column, new_normal]),
        geometry.sorted_by,
        geometry.uniform_spacing,
        geometry.orientation_known,
    )
    return pixels, standard
