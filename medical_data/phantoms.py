"""Synthetic chest studies with controlled findings and their ground truth (seeded, numpy and pydicom only).

A phantom is defined in patient coordinates (DICOM LPS, millimetres: +x the patient's left, +y
posterior, +z superior) and sampled through each image's own geometry, so a series stored with a
reversed row or column direction shows the same anatomy on the same side of the patient; only the
pixel order changes. Findings have physical meaning: a nodule's diameter is in millimetres (drawn
through the pixel spacing), its density in Hounsfield units; an effusion lies in the dependent
(posterior) part of one pleural space, a pneumothorax in the anterior part.

- ``sample_findings(rng)``: a random, plausible set (about a quarter of studies normal).
- ``write_ct_chest(folder, findings, seed=..)``: an axial CT series, ``ground_truth.json`` beside it.
- ``write_cr_chest(folder, findings, seed=..)``: a PA chest radiograph (a projection of the same phantom).

This is the project's own code because no installed package makes DICOM phantoms with findings and
ground truth; the geometry and header conventions are DICOM's (PS3.3 C.7.6.2, C.7.6.1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medical_data.dicom_io import write_atomically as write_dicom
from omniclinic_common.files import write_atomically

GROUND_TRUTH = "ground_truth.json"
SERIES_FOLDER = "series"
"""A CT's slices go in this folder of the study's, apart from its ground truth: a series folder holds DICOM only."""
DENSITY_HU = {"solid": 40.0, "fluid": 5.0, "fat": -90.0, "calcified": 600.0}
MASS_MM = 30.0
"""A lesion of this diameter or more is a mass; smaller, a nodule (Fleischner glossary)."""
LUNGS = {"right": (-75.0, 0.0), "left": (75.0, 0.0)}  # centre (x, y) of each lung, mm
LUNG_AXES = (55.0, 80.0, 120.0)  # semi-axes (x, y, z) of each lung, mm
LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}
AIR, LUNG, SOFT, FAT, BONE, FLUID = -1000.0, -850.0, 40.0, -100.0, 700.0, 5.0


@dataclass(frozen=True)
class Lesion:
    side: str
    lobe: str
    diameter_mm: float
    density: str
    centre_mm: tuple[float, float, float]

    @property
    def kind(self) -> str:
        return "mass" if self.diameter_mm >= MASS_MM else "nodule"


@dataclass(frozen=True)
class ChestFindings:
    lesions: tuple[Lesion, ...] = ()
    effusion: str = ""
    """The side of a pleural effusion, or empty."""
    pneumothorax: str = ""
    """The side of a pneumothorax, or empty."""

    @property
    def normal(self) -> bool:
        return not (self.lesions or self.effusion or self.pneumothorax)


@dataclass(frozen=True)
class Geometry:
    """How a CT series samples the phantom: matrix, spacing, slices, and which directions are reversed."""

    matrix: int = 80
    pixel_mm: float = 4.2
    slices: int = 32
    slice_mm: float = 7.5
    reversed_columns: bool = False
    """Columns run toward the patient's right (row direction cosine -x) instead of the usual left."""
    reversed_rows: bool = False
    """Rows run toward the anterior (column direction cosine -y) instead of the usual posterior."""


@dataclass
class GroundTruth:
    modality: str
    body_part: str
    study_instance_uid: str
    findings: ChestFindings
    reversed_columns: bool = False
    reversed_rows: bool = False
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["normal"] = self.findings.normal
        data["findings"]["lesions"] = [asdict(lesion) | {"kind": lesion.kind} for lesion in self.findings.lesions]
        return data


def lobe_of(side: str, z_mm: float) -> str:
    if side == "right":
        return "upper" if z_mm > 40 else "middle" if z_mm > -20 else "lower"
    return "upper" if z_mm > 0 else "lower"


def sample_findings(rng: np.random.Generator, *, normal_fraction: float = 0.25) -> ChestFindings:
    """Findings for one study: none (``normal_fraction`` of the time), or lesions, an effusion, a pneumothorax."""
    if rng.random() < normal_fraction:
        return ChestFindings()
    lesions = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        side = str(rng.choice(["right", "left"]))
        diameter = float(np.round(rng.uniform(10.0, 45.0), 1))
        radius = diameter / 2
        cx, cy = LUNGS[side]
        ax, ay, az = LUNG_AXES
        for _attempt in range(100):  # a centre well inside the lung, clear of the other lesions
            x, y, z = cx + rng.uniform(-1, 1) * (ax - radius), cy + rng.uniform(-1, 1) * (ay - radius), 0.0
            z = rng.uniform(-1, 1) * (az - radius - 10)
            inside = ((x - cx) / (ax - radius)) ** 2 + ((y - cy) / (ay - radius)) ** 2 + (z / (az - radius)) ** 2 < 0.8
            apart = all(
                np.linalg.norm(np.subtract((x, y, z), other.centre_mm)) > radius + other.diameter_mm / 2 + 5
                for other in lesions
            )
            if inside and apart:
                break
        else:
            continue
        density = str(rng.choice(list(DENSITY_HU)))
        centre = (round(float(x), 1), round(float(y), 1), round(float(z), 1))
        lesions.append(Lesion(side, lobe_of(side, centre[2]), diameter, density, centre))
    effusion = str(rng.choice(["", "", "right", "left"]))
    pneumothorax = str(rng.choice(["", "", "", "right", "left"]))
    if pneumothorax and pneumothorax == effusion:
        pneumothorax = ""
    findings = ChestFindings(tuple(lesions), effusion, pneumothorax)
    return findings if not findings.normal else ChestFindings(effusion=str(rng.choice(["right", "left"])))


def chest_hu(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, findings: ChestFindings, rng: np.random.Generator
) -> np.ndarray:
    """Hounsfield units of the chest phantom at patient coordinates (mm), any matching shapes."""
    hu = np.full(np.broadcast(x, y, z).shape, AIR)
    body = (x / 160.0) ** 2 + (y / 110.0) ** 2 < 1.0
    hu[body] = FAT
    hu[(x / 150.0) ** 2 + (y / 100.0) ** 2 < 1.0] = SOFT
    ax, ay, az = LUNG_AXES
    for side, (cx, cy) in LUNGS.items():
        lung = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + (z / az) ** 2 < 1.0
        hu[lung] = LUNG + rng.normal(0.0, 25.0, size=hu.shape)[lung]
        if findings.effusion == side:  # fluid layers in the dependent, posterior part
            hu[lung & (y > cy + 0.35 * ay)] = FLUID
        if findings.pneumothorax == side:  # air collects anteriorly; the lung behind it collapses a little
            hu[lung & (y < cy - 0.45 * ay)] = AIR
            hu[lung & (y >= cy - 0.45 * ay) & (hu < -500)] = -700.0
    hu[((x - 15.0) / 45.0) ** 2 + ((y + 10.0) / 55.0) ** 2 + ((z + 30.0) / 70.0) ** 2 < 1.0] = SOFT  # heart
    hu[(x**2 + (y - 80.0) ** 2 < 18.0**2) & body] = BONE  # spine
    for lesion in findings.lesions:
        lx, ly, lz = lesion.centre_mm
        inside = (x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2 < (lesion.diameter_mm / 2) ** 2
        hu[inside] = DENSITY_HU[lesion.density]
    return hu


def _header(modality: str, sop_class: str, study: str, series: str, number: int, rng_id: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.PatientName, ds.PatientID = f"PHANTOM^{rng_id:06d}", f"PH{rng_id:06d}"
    ds.PatientSex, ds.PatientAge = "O", "060Y"
    ds.AccessionNumber, ds.StudyID = f"PHA{rng_id:06d}", "1"
    ds.StudyDate = ds.SeriesDate = "20240105"
    ds.StudyTime = "090000"
    ds.Manufacturer, ds.InstitutionName = "omniclinic phantom", "Synthetic"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def write_ct_chest(folder: Path, findings: ChestFindings, *, seed: int, geometry: Geometry = Geometry()) -> GroundTruth:
    """An axial chest CT of ``findings``: one file per slice in ``folder/series``, the ground truth in ``folder``."""
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    g = geometry
    row_dir = (-1.0 if g.reversed_columns else 1.0, 0.0, 0.0)  # the direction a row runs (column index grows)
    col_dir = (0.0, -1.0 if g.reversed_rows else 1.0, 0.0)  # the direction a column runs (row index grows)
    half = (g.matrix - 1) * g.pixel_mm / 2
    index = np.arange(g.matrix) * g.pixel_mm
    truth = GroundTruth("CT", "CHEST", study, findings, g.reversed_columns, g.reversed_rows)
    for number in range(g.slices):
        z = (number - (g.slices - 1) / 2) * g.slice_mm
        origin = (-row_dir[0] * half, -col_dir[1] * half, z)
        x = origin[0] + row_dir[0] * index[None, :] + 0 * index[:, None]
        y = origin[1] + col_dir[1] * index[:, None] + 0 * index[None, :]
        hu = chest_hu(x, y, np.full_like(x, z), findings, rng)
        ds = _header("CT", CTImageStorage, study, series, number + 1, seed)
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST", "Axial lung 7.5mm"
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = [round(v, 3) for v in origin]
        ds.PixelSpacing = [g.pixel_mm, g.pixel_mm]
        ds.SliceThickness = g.slice_mm
        ds.SliceLocation = round(z, 3)
        ds.Rows = ds.Columns = g.matrix
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.KVP = 120
        ds.PixelData = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16).tobytes()
        name = f"{SERIES_FOLDER}/{number + 1:04d}.dcm"
        write_dicom(ds, folder / name)
        truth.files.append(name)
    write_atomically(folder / GROUND_TRUTH, json.dumps(truth.as_dict(), indent=1) + "\n")
    return truth


def write_cr_chest(folder: Path, findings: ChestFindings, *, seed: int, reversed_columns: bool = False) -> GroundTruth:
    """A PA chest radiograph of ``findings``: the phantom's attenuation summed front to back.

    Displayed as usual, the patient's left is on the image's right (``PatientOrientation`` L\\F);
    ``reversed_columns`` stores it mirrored (R\\F), as some exports do.
    """
    rng = np.random.default_rng(seed)
    pixel_mm, size = 2.0, 176
    lateral = (np.arange(size) - (size - 1) / 2) * pixel_mm  # x of each column, patient right to left
    height = (np.arange(size) - (size - 1) / 2) * -pixel_mm  # z of each row, head to feet
    depth = np.arange(-120.0, 121.0, 4.0)
    x, z, y = np.meshgrid(lateral, height, depth, indexing="ij")
    attenuation = np.clip(chest_hu(x, y, z, findings, rng) + 1000.0, 0, None).sum(axis=2).T  # (rows=z, cols=x)
    image = 4095 * (attenuation - attenuation.min()) / max(float(np.ptp(attenuation)), 1.0)
    if reversed_columns:
        image = image[:, ::-1]
    study, series = generate_uid(), generate_uid()
    ds = _header("CR", ComputedRadiographyImageStorage, study, series, 1, seed)
    ds.StudyDescription, ds.SeriesDescription = "XR CHEST PA", "PA"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["R" if reversed_columns else "L", "F"]
    ds.ImagerPixelSpacing = [pixel_mm, pixel_mm]
    ds.Rows = ds.Columns = size
    ds.PixelData = np.rint(image).astype(np.uint16).tobytes()
    write_dicom(ds, folder / "0001.dcm")
    truth = GroundTruth("CR", "CHEST", study, findings, reversed_columns, False, ["0001.dcm"])
    write_atomically(folder / GROUND_TRUTH, json.dumps(truth.as_dict(), indent=1) + "\n")
    return truth


# -- questions and reports ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QuestionAnswer:
    question: str
    answer: str
    kind: str
    """What is asked: modality, body_part, presence_lesion, presence_effusion, presence_pneumothorax,
    side, count, size_class (closed), or findings (open)."""

    @property
    def closed(self) -> bool:
        return self.kind != "findings"


TRAINING_PHRASINGS: dict[str, tuple[str, ...]] = {
    # several ways of asking each thing, so that the model learns the question, not one sentence
    "modality": (
        "What imaging modality is this?",
        "Which modality was used?",
        "What kind of scan is this?",
        "Is this a CT or a radiograph?",
        "What type of imaging study is this?",
        "Which imaging technique produced these images?",
        "Name the modality.",
        "Was this done with CT or with plain X-ray?",
        "Tell me the imaging method.",
        "What scanner made these pictures?",
        "CT or X-ray?",
        "Is this a radiograph or a CT scan?",
        "What modality are these images from?",
        "Which imaging modality produced this study?",
        "Modality, please.",
        "Plain X-ray or CT?",
    ),
    "body_part": (
        "Which body part is shown?",
        "What part of the body is imaged?",
        "Which anatomy is this?",
        "What body area is in this study?",
        "Which part of the patient was scanned?",
        "Name the body part.",
        "Which anatomy was imaged?",
        "Body part, please.",
    ),
    "presence_lesion": (
        "Is there a lung nodule or mass?",
        "Do you see a pulmonary nodule or mass?",
        "Are there any lung nodules or masses?",
        "Is a pulmonary mass or nodule present?",
        "Does either lung contain a nodule or a mass?",
        "Can you find a lesion in the lungs?",
        "Is there a nodule or mass in either lung?",
        "Do the lungs show a nodule or a mass?",
        "Lung nodule or mass: yes or no?",
        "Is a pulmonary nodule or mass visible?",
    ),
    "presence_effusion": (
        "Is there a pleural effusion?",
        "Do you see pleural fluid?",
        "Is an effusion present?",
        "Does the patient have a pleural effusion?",
        "Is there fluid around a lung?",
        "Can you see an effusion?",
        "Pleural effusion: yes or no?",
        "Is there an effusion on either side?",
        "Has fluid collected around either lung?",
    ),
    "presence_pneumothorax": (
        "Is there a pneumothorax?",
        "Do you see a pneumothorax?",
        "Is a pneumothorax present?",
        "Does the patient have a pneumothorax?",
        "Can you see a pneumothorax?",
        "Pneumothorax: yes or no?",
        "Is a pneumothorax visible?",
        "Is there a pneumothorax on either side?",
    ),
    "side": (
        "On which side is the {finding}?",
        "Which side is the {finding} on?",
        "Which lung has the {finding}?",
        "What side is the {finding}?",
        "Tell me the side of the {finding}.",
        "Which hemithorax holds the {finding}?",
        "The {finding}: which side?",
        "Which side of the chest has the {finding}?",
        "Laterality of the {finding}?",
    ),
    "count": (
        "How many lung nodules or masses are there?",
        "Count the lung lesions.",
        "How many nodules or masses are in the lungs?",
        "How many nodules or masses do you see?",
        "Give the count of lung nodules and masses.",
        "How many pulmonary lesions are present?",
        "How many lesions are in the lungs?",
        "Lesion count in the lungs?",
        "Total of nodules and masses?",
        "How many lesions can you count in the lungs?",
    ),
    "size_class": (
        "Nodule or mass?",
        "Nodule or mass: which is this lesion?",
        "Is this lesion a mass or a nodule?",
        "Classify the lesion: nodule or mass?",
        "Is the lung lesion small enough to be a nodule, or is it a mass?",
        "Mass or nodule?",
        "Is this lesion three centimetres or more (a mass) or smaller (a nodule)?",
    ),
    "findings": (
        "Describe the findings.",
        "What do you see?",
        "What are the findings?",
        "Describe this study.",
        "Report the findings.",
        "List the findings.",
        "Please describe the images.",
        "Give me the findings.",
        "Read this study.",
        "What is abnormal here?",
    ),
}
HELD_OUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    # phrasings the training and validation splits never use: the held-out test asks in these
    "modality": ("How was this image acquired?",),
    "body_part": ("What region does this cover?",),
    "presence_lesion": ("Any focal lung lesion?",),
    "presence_effusion": ("Any fluid in the pleural space?",),
    "presence_pneumothorax": ("Is the lung collapsed by free air?",),
    "side": ("Where, left or right, is the {finding}?",),
    "count": ("What is the number of lung lesions?",),
    "size_class": ("Would you call the lesion a nodule or a mass?",),
    "findings": ("Summarise what this study shows.",),
}


def finding_sentences(findings: ChestFindings) -> list[str]:
    """The findings in a radiologist's words, lesions first (largest first)."""
    sentences = []
    for lesion in sorted(findings.lesions, key=lambda item: -item.diameter_mm):
        sentences.append(
            f"A {lesion.diameter_mm:g} mm {lesion.density} {lesion.kind} in the {lesion.side} {lesion.lobe} lobe."
        )
    if findings.effusion:
        sentences.append(f"{findings.effusion.capitalize()} pleural effusion.")
    if findings.pneumothorax:
        sentences.append(f"{findings.pneumothorax.capitalize()} pneumothorax.")
    return sentences or ["No lung nodule or mass, no pleural effusion, no pneumothorax."]


def reference_report(truth: GroundTruth) -> str:
    """The study's reference report, in the sections the drafting prompt asks for."""
    findings = truth.findings
    if findings.normal:
        impression = "Normal study."
    else:
        parts = [
            f"{lesion.side} {lesion.lobe} lobe {lesion.kind}"
            for lesion in sorted(findings.lesions, key=lambda item: -item.diameter_mm)
        ]
        if findings.effusion:
            parts.append(f"{findings.effusion} pleural effusion")
        if findings.pneumothorax:
            parts.append(f"{findings.pneumothorax} pneumothorax")
        impression = "; ".join(parts).capitalize() + "."
    return f"Findings: {' '.join(finding_sentences(findings))}\nImpression: {impression}"


def question_answers(truth: GroundTruth, rng: np.random.Generator, *, held_out: bool = False) -> list[QuestionAnswer]:
    """Closed and open questions about the study with their answers from the ground truth, phrased as
    the training split phrases them, or (``held_out``) in words training never uses."""
    findings = truth.findings

    def ask(kind: str, answer: str, **fields: str) -> QuestionAnswer:
        phrasings = (HELD_OUT_PHRASINGS if held_out else TRAINING_PHRASINGS)[kind]
        return QuestionAnswer(str(rng.choice(phrasings)).format(**fields), answer, kind)

    pairs = [
        ask("modality", {"CT": "CT", "CR": "X-ray (CR)"}.get(truth.modality, truth.modality)),
        ask("body_part", truth.body_part.lower()),
        ask("presence_lesion", "yes" if findings.lesions else "no"),
        ask("presence_effusion", "yes" if findings.effusion else "no"),
        ask("presence_pneumothorax", "yes" if findings.pneumothorax else "no"),
        ask("count", str(len(findings.lesions))),
        ask("findings", " ".join(finding_sentences(findings))),
    ]
    if findings.effusion:
        pairs.append(ask("side", findings.effusion, finding="pleural effusion"))
    if findings.pneumothorax:
        pairs.append(ask("side", findings.pneumothorax, finding="pneumothorax"))
    if len(findings.lesions) == 1:
        lesion = findings.lesions[0]
        pairs.append(ask("side", lesion.side, finding=lesion.kind))
        pairs.append(ask("size_class", lesion.kind))
    return pairs
