"""The PS3.15 Annex E confidentiality profile as data: one rule per attribute of Table E.1-1.

The table (``ps3_15_table_e1_1.json``, see TABLE_SOURCE.md) gives each attribute its Basic Profile
action and the actions of the options. ``ProfileOptions`` picks the options; ``action_for`` says
what to do with one tag. Compound actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) resolve to the member that
keeps the object valid for any IOD (the last one) -- a dummy or empty value holds no identity either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

Action = Literal["X", "Z", "D", "U", "K", "C"]

# Option columns of the table, in the order they override the Basic Profile.
OPTION_COLUMNS = {
    "retain_dates": "rtnLongModifDatesOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "clean_descriptors": "cleanDescOpt",
}
# DICOM CID 7050 codes written to DeidentificationMethodCodeSequence.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")
OPTION_CODES = {
    "retain_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
}
COMPOUND_RESOLUTION: dict[str, Action] = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}


@dataclass(frozen=True)
class ProfileOptions:
    """Which Annex E options apply on top of the Basic Profile."""

    retain_dates: bool = False
    """Retain Longitudinal Temporal Information, Modified Dates: dates shifted per patient."""
    retain_patient_characteristics: bool = False
    """Keep age, sex, size, weight and similar; clean the free-text ones."""
    clean_descriptors: bool = False
    """Keep descriptions and comments, with identifiers removed, instead of removing them."""
    safe_private: tuple[tuple[str, int, int], ...] = ()
    """(private creator, group, element offset 0x00-0xFF) of private attributes known to hold no identity."""

    @property
    def enabled(self) -> tuple[str, ...]:
        names = [name for name in OPTION_COLUMNS if getattr(self, name)]
        return (*names, "retain_safe_private") if self.safe_private else tuple(names)


@dataclass(frozen=True)
class ProfileRule:
    name: str
    basic: str
    options: dict[str, str]


@dataclass(frozen=True)
class ConfidentialityProfile:
    """Rules by exact tag, plus the repeating-group rules (curves 50xx, overlays 60xx)."""

    exact: dict[int, ProfileRule]
    curve_rule: ProfileRule
    overlay_rules: dict[int, ProfileRule]  # by element number within an overlay group

    def rule_for(self, tag: int) -> ProfileRule | None:
        group, element = tag >> 16, tag & 0xFFFF
        if tag in self.exact:
            return self.exact[tag]
        if 0x5000 <= group <= 0x501E and group % 2 == 0:
            return self.curve_rule
        if 0x6000 <= group <= 0x601E and group % 2 == 0:
            return self.overlay_rules.get(element)
        return None

    def action_for(self, tag: int, options: ProfileOptions) -> Action | None:
        """The action for ``tag`` under ``options``; None when the table does not list it (keep)."""
        rule = self.rule_for(tag)
        return None if rule is None else _resolve(rule, options.enabled)

    def resolved(self, options: ProfileOptions) -> Callable[[int], Action | None]:
        """``action_for`` with the options applied once: a dict lookup per tag (the de-id hot path)."""
        enabled = options.enabled
        exact = {tag: _resolve(rule, enabled) for tag, rule in self.exact.items()}
        curve = _resolve(self.curve_rule, enabled)
        overlays = {element: _resolve(rule, enabled) for element, rule in self.overlay_rules.items()}

        def action(tag: int) -> Action | None:
            found = exact.get(tag)
            if found is not None:
                return found
            group = tag >> 16
            if 0x5000 <= group <= 0x501E and group % 2 == 0:
                return curve
            if 0x6000 <= group <= 0x601E and group % 2 == 0:
                return overlays.get(tag & 0xFFFF)
            return None

        return action


def _resolve(rule: ProfileRule, enabled: tuple[str, ...]) -> Action:
    for option in enabled:
        column = OPTION_COLUMNS.get(option)
        if column and column in rule.options:
            return rule.options[column]  # type: ignore[return-value]
    return COMPOUND_RESOLUTION.get(rule.basic, rule.basic)  # type: ignore[return-value]


@cache
def basic_profile() -> ConfidentialityProfile:
    """The profile built from the packaged table (all 621 rows)."""
    rows = json.loads(files("medical_data.deid").joinpath("ps3_15_table_e1_1.json").read_text(encoding="utf-8"))
    exact: dict[int, ProfileRule] = {}
    curve_rule: ProfileRule | None = None
    overlay_rules: dict[int, ProfileRule] = {}
    for row in rows:
        options = {key: value for key, value in row.items() if key.endswith("Opt")}
        rule = ProfileRule(row["name"], row["basicProfile"], options)
        tag = row["tag"].strip("()").upper()
        if tag.startswith("50XX"):
            curve_rule = rule
        elif tag.startswith("60XX"):
            overlay_rules[int(tag.split(",")[1], 16)] = rule
        elif tag.startswith("GGGG"):
            continue  # private attributes: handled by the private-tag pass, not the table walk
        else:
            group, element = tag.split(",")
            exact[(int(group, 16) << 16) | int(element, 16)] = rule
    if curve_rule is None or not overlay_rules:
        raise RuntimeError("the packaged confidentiality table is incomplete")
    return ConfidentialityProfile(exact, curve_rule, overlay_rules)


def table_row_count() -> int:
    return len(json.loads(files("medical_data.deid").joinpath("ps3_15_table_e1_1.json").read_text(encoding="utf-8")))
