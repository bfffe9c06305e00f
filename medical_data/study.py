"""Load images and series as MONAI MetaTensors with the header facts the model and the UI need.

A loaded image is channel-first ``(C, D, H, W)``: C is 1 (grey) or 3 (RGB or three-window CT), D is
1 for a single 2D image, the slice count of a series, or the frame count of a multi-frame object.
Values are display-ready in [0, 1]; ``meta`` says which window made them. Pixels are turned to the
standard reading orientation from the header (``volume.standard_orientation``: patient's right on
the image's left in axial and coronal images), so the model and the viewer see the same anatomy at
the same place whichever way the scanner stored it; the affine (LPS, ``meta["space"]``) follows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset

from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, read_dicom, typed_dicom_errors
from medical_data.pixels import RenderedPixels, render
from medical_data.volume import SliceGeometry, multiframe_geometry, sort_slices, standard_orientation

# Header attributes carried into ``meta`` under their DICOM keywords (study-level facts only; no
# patient identity: name, IDs and birth date never enter the model's inputs).
FACT_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "StudyDate",
    "SeriesDate",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Laterality",
    "ImageLaterality",
    "PatientOrientation",
    "ViewPosition",
    "SliceThickness",
    "Manufacturer",
)


@typed_dicom_errors
def header_facts(dataset: Dataset) -> dict[str, Any]:
    """Study facts from the header as plain strings (empty when absent)."""
    facts: dict[str, Any] = {}
    for keyword in FACT_KEYWORDS:
        value = dataset.get(keyword)
        if value is None:
            facts[keyword] = ""
        elif isinstance(value, str | int | float):
            facts[keyword] = str(value)
        else:
            facts[keyword] = "\\".join(str(part) for part in value)
    return facts


def _to_metatensor(rendered: RenderedPixels, geometry: SliceGeometry, facts: dict[str, Any]) -> MetaTensor:
    """Pixels in the standard reading orientation, with the affine (LPS, labelled) that maps their indices."""
    standard, geometry = standard_orientation(rendered.pixels, geometry)  # (D, H, W, C)
    pixels = np.ascontiguousarray(np.moveaxis(standard, -1, 0))  # (C, D, H, W)
    meta = facts | {
        "space": "LPS",  # MONAI's MetaKeys.SPACE: its Orientation and Spacing transforms then keep left as left
        "spacing": geometry.spacing,
        "origin": geometry.origin,
        "direction": geometry.direction.tolist(),
        "sorted_by": geometry.sorted_by,
        "uniform_spacing": geometry.uniform_spacing,
        "window": [(w.name, w.center, w.width) for w in rendered.window],
        "photometric_interpretation": rendered.photometric_interpretation,
        "modality_units": rendered.modality_units,
    }
    return MetaTensor(torch.from_numpy(pixels), affine=torch.as_tensor(geometry.affine), meta=meta)


def load_image(
    path: str | os.PathLike[str],
    *,
    preset: str | None = None,
    three_window_ct: bool = False,
    limits: DicomLimits = DEFAULT_LIMITS,
) -> MetaTensor:
    """One DICOM image object (single frame or multi-frame) as a ``(C, D, H, W)`` MetaTensor."""
    dataset = read_dicom(path, limits=limits)
    rendered = render(dataset, preset=preset, three_window_ct=three_window_ct, limits=limits)
    if rendered.pixels.shape[0] > 1:
        order, geometry = multiframe_geometry(dataset)
        rendered = RenderedPixels(
            rendered.pixels[order], rendered.window, rendered.photometric_interpretation, rendered.modality_units
        )
    else:
        _, geometry = sort_slices([dataset])
    return _to_metatensor(rendered, geometry, header_facts(dataset))


def load_series(
    paths: Sequence[str | os.PathLike[str]],
    *,
    preset: str | None = None,
    three_window_ct: bool = False,
    limits: DicomLimits = DEFAULT_LIMITS,
) -> MetaTensor:
    """The single-frame slices of one series as a geometrically sorted ``(C, D, H, W)`` volume.

    One window is used for the whole volume (the first slice's header window, or the preset), so
    that intensities are comparable across slices.
    """
    datasets, geometry = sort_slices([read_dicom(path, limits=limits) for path in paths])
    first = render(datasets[0], preset=preset, three_window_ct=three_window_ct, limits=limits)
    shared_window = first.window[0] if len(first.window) == 1 else None
    slices = [first.pixels] + [
        render(ds, window=shared_window, three_window_ct=three_window_ct, limits=limits).pixels for ds in datasets[1:]
    ]
    stacked = RenderedPixels(
        np.concatenate(slices, axis=0), first.window, first.photometric_interpretation, first.modality_units
    )
    return _to_metatensor(stacked, geometry, header_facts(datasets[0]))
