"""The release manifest: one TOML file that describes a release, validated with pydantic.

A manifest says what was observed (program, targets, bands), which jwst version and CRDS
context process it, per-target exceptions (MIRI background borrowing, skipped observations,
step parameters), and what goes out (products, comparisons). :func:`load_manifest` reads a
file, resolves a patch manifest against its parent, validates everything and returns a
:class:`Manifest`, or raises :class:`~processing.errors.ManifestError` listing every problem
with the dotted path of the key (``targets.ic5332.miri_background.borrow_from``).

Versions: a release version is ``MAJOR.MINOR.PATCH`` (``1.1.0``). File names carry
``v<MAJOR>p<MINOR>`` and, when PATCH is not zero, ``p<PATCH>``: 1.0.1 -> ``v1p0p1``,
1.1.0 -> ``v1p1``, 1.1.1 -> ``v1p1p1`` (the names PHANGS-JWST used on MAST).

Parameter precedence, lowest to highest: ``parameters.default``, ``parameters.instrument.<inst>``,
``parameters.band.<band>``, then the same three layers under ``targets.<name>.parameters``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from processing.errors import ManifestError
from processing.instruments import FILTERS, INSTRUMENTS, all_filters, did_you_mean, instrument_of
from release.naming import file_version, version_tuple

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------


class PathSetting:
    """Marks a setting that names a file or folder, relative to the manifest's folder: a patch
    inheriting it from a parent in another folder gets it rebased (:func:`_rebase_paths`), and
    every such setting is found from this mark alone (tests/release/test_manifest.py lists them)."""

    def __repr__(self) -> str:
        return "PathSetting()"


#: A file or folder, relative to the manifest's folder (or absolute; ``~`` expanded).
ManifestPath = Annotated[str, PathSetting()]

_VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_PEP440_RE = re.compile(r"^\d+(\.\d+){1,3}((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
_CONTEXT_RE = re.compile(r"^jwst_\d{4}\.pmap$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")
# MAST target field: lower-case letters, digits, '-', '.', '+'; starts and ends alphanumeric.
_TARGET_RE = re.compile(r"^[a-z0-9]([a-z0-9.+-]*[a-z0-9])?$")
_DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_version(value: str) -> str:
    if not _VERSION_RE.match(value):
        raise PydanticCustomError(
            "release_version",
            "'{value}' is not a release version MAJOR.MINOR.PATCH such as 1.1.0",
            {"value": value},
        )
    return value


def _check_jwst_version(value: str) -> str:
    if not _PEP440_RE.match(value):
        raise PydanticCustomError(
            "jwst_version", "'{value}' is not a jwst release version such as 1.13.4", {"value": value}
        )
    return value


def _check_context(value: str) -> str:
    if not _CONTEXT_RE.match(value):
        raise PydanticCustomError(
            "crds_context",
            "'{value}' is not a JWST CRDS context name like jwst_1201.pmap",
            {"value": value},
        )
    return value


def _check_project(value: str) -> str:
    if len(value) > 20 or not _PROJECT_RE.match(value):
        raise PydanticCustomError(
            "project_id",
            "'{value}' is not a MAST HLSP id: lower-case letters, digits and '-', starting with "
            "a letter, at most 20 characters",
            {"value": value},
        )
    return value


#: Target fields of file names that are not targets: the release-level files (README, manifest,
#: changes) are named with target 'all'.
RESERVED_TARGETS = frozenset({"all"})


def _check_target_name(value: str) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("target_name", "target names are strings")
    if value.lower() in RESERVED_TARGETS:
        raise PydanticCustomError(
            "target_name",
            "target name '{value}' is reserved: the release-level files (README, manifest) use it in their "
            "names; call the target by its designation (e.g. 'ngc0628')",
            {"value": value},
        )
    if value != value.lower() and _TARGET_RE.match(value.lower()):
        raise PydanticCustomError(
            "target_name",
            "target name '{value}' must be lower case (did you mean '{lower}'?)",
            {"value": value, "lower": value.lower()},
        )
    if len(value) > 30 or not _TARGET_RE.match(value) or ".." in value:
        raise PydanticCustomError(
            "target_name",
            "target name '{value}' is not safe for MAST file names and directories: use lower-case "
            "letters, digits, '-', '.', '+' (no '/', no '..', no '_', no spaces), at most 30 "
            "characters, starting and ending with a letter or digit",
            {"value": value},
        )
    return value


#: Catalogue services tweakreg can query by name (abs_refcat): they need the network.
_CATALOG_SERVICES = re.compile(r"^(gaia\w*|gsc\w*|2mass|sdss\w*|panstarrs\w*)$", re.IGNORECASE)


def _check_catalog(value: str) -> str:
    if _CATALOG_SERVICES.match(value.strip()):
        raise PydanticCustomError(
            "astrometry_catalog",
            "'{value}' names a catalogue service, which needs the network; this system runs offline: "
            "give a local catalogue file with RA and DEC columns (e.g. a Gaia query saved as ECSV or FITS)",
            {"value": value},
        )
    return value


def _normalise_band(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _check_band(value: str) -> str:
    if value not in all_filters():
        raise PydanticCustomError(
            "band",
            "'{value}' is not a NIRCam or MIRI imaging filter{hint}",
            {"value": value, "hint": did_you_mean(value, all_filters())},
        )
    return value


def _check_doi(value: str) -> str:
    if not _DOI_RE.match(value):
        raise PydanticCustomError("doi", "'{value}' is not a DOI such as 10.17909/ew88-jt15", {"value": value})
    return value


def _check_email(value: str) -> str:
    if not _EMAIL_RE.match(value):
        raise PydanticCustomError("email", "'{value}' is not an e-mail address", {"value": value})
    return value


def _check_header_text(value: str) -> str:
    """Text that goes into a FITS header card: printable ASCII, fits on one card (68 characters)."""
    bad = sorted({ch for ch in value if not (" " <= ch <= "~")})
    if bad:
        raise PydanticCustomError(
            "header_text",
            "'{value}' has characters a FITS header cannot hold ({chars}): use printable ASCII",
            {"value": value, "chars": ", ".join(repr(c) for c in bad)},
        )
    if len(value) > 68:
        raise PydanticCustomError(
            "header_text", "is {n} characters; a FITS header value holds at most 68 (one card)", {"n": len(value)}
        )
    if not value.strip():
        raise PydanticCustomError("header_text", "must not be empty")
    return value


def _check_text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("text", "must not be empty")
    return value


def _unique_band_keys(value: Any) -> Any:
    """Refuse two keys naming the same band in different case ([...band.F200W] and [...band.f200w])."""
    if isinstance(value, dict):
        seen: dict[Any, str] = {}
        for key in value:
            norm = _normalise_band(key)
            if norm in seen:
                raise PydanticCustomError(
                    "duplicate_band",
                    "'{a}' and '{b}' are the same band: give its table once",
                    {"a": seen[norm], "b": key},
                )
            seen[norm] = key
    return value


def _check_pattern(value: str) -> str:
    if not value or "/" in value or "\\" in value:
        raise PydanticCustomError(
            "pattern",
            "'{value}' must be a file-name pattern without directories (e.g. 'jw02107001*')",
            {"value": value},
        )
    return value


ReleaseVersion = Annotated[str, AfterValidator(_check_version)]
JwstVersion = Annotated[str, AfterValidator(_check_jwst_version)]
CrdsContext = Annotated[str, AfterValidator(_check_context)]
ProjectId = Annotated[str, AfterValidator(_check_project)]
TargetName = Annotated[str, AfterValidator(_check_target_name)]
Band = Annotated[str, BeforeValidator(_normalise_band), AfterValidator(_check_band)]
Instrument = Literal["nircam", "miri"]
Doi = Annotated[str, AfterValidator(_check_doi), AfterValidator(_check_header_text)]
Email = Annotated[str, AfterValidator(_check_email)]
FilePattern = Annotated[str, AfterValidator(_check_pattern)]
#: Text written into FITS headers of every product (printable ASCII, one card).
HeaderText = Annotated[str, AfterValidator(_check_header_text)]
#: Text for the README (any Unicode), not empty.
Text = Annotated[str, AfterValidator(_check_text)]
#: A band list: at least one band, each once.
BandList = Annotated[list[Band], Field(min_length=1)]
#: A stage's parameters: {stage: {jwst step: {param: value}}} or {stage: {param: value}}.
StageParameters = dict[str, dict[str, Any]]


class StrictModel(BaseModel):
    """A manifest table: unknown keys are refused with a did-you-mean; values must have the
    TOML type of the field (``ra = "150.1"`` or ``previews = "false"`` is refused, never
    converted; an integer is accepted for a float)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key{hint}",
                        {"key": key, "hint": did_you_mean(key, sorted(known))},
                    )
        return data


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


class Contact(StrictModel):
    name: Text = Field(description="Person to contact about the release.")
    email: Email = Field(description="Their e-mail address.")


class Release(StrictModel):
    """What is being released, by whom, under which licence."""

    project: ProjectId = Field(description="MAST HLSP id, the first field of every file name, e.g. 'phangs-jwst'.")
    title: HeaderText = Field(
        description="Long project title (HLSPNAME keyword; printable ASCII, at most 68 characters)."
    )
    version: ReleaseVersion = Field(
        description="Release version MAJOR.MINOR.PATCH. File names carry vMAJORpMINOR[pPATCH], "
        "the patch part only when it is not 0: 1.1.0 -> v1p1, 1.0.1 -> v1p0p1."
    )
    previous: ReleaseVersion | None = Field(
        default=None, description="The version this release replaces (for the README and changelog); must be lower."
    )
    kind: Literal["full", "patch"] = Field(
        default="full",
        description="'full' cuts every target; 'patch' regenerates the targets named in [patch] and carries the rest "
        "over from the parent.",
    )
    doi: Doi = Field(description="DOI of the HLSP collection (DOI keyword).")
    lead: HeaderText = Field(
        description="Name of the project lead (HLSPLEAD keyword; printable ASCII, at most 68 characters)."
    )
    pi: Text = Field(description="Principal investigator of the observing program(s).")
    contact: Contact = Field(description="Who answers questions about this release.")
    license: HeaderText = Field(default="CC BY 4.0", description="Licence of the products (LICENSE keyword).")
    license_url: HeaderText = Field(
        default="https://creativecommons.org/licenses/by/4.0/",
        description="URL of the licence text (LICENURL keyword).",
    )
    references: list[HeaderText] = Field(
        default_factory=list,
        description="Bibliographic references (ADS bibcodes or DOIs); the first goes into REFERENC.",
    )
    summary: str = Field(default="", description="Short project summary for the README (aims, coverage).")
    changes: list[str] = Field(
        default_factory=list, description="What changed since the previous version, for the README and CHANGES."
    )
    known_issues: list[str] = Field(default_factory=list, description="Known issues listed in the README.")


class Pins(StrictModel):
    """The software and calibration every product of the release is made with."""

    jwst: JwstVersion = Field(description="Exact jwst package version; a run refuses any other installed version.")
    crds_context: CrdsContext = Field(
        description="CRDS context every reference-file lookup uses, e.g. 'jwst_1201.pmap'."
    )
    crds_path: ManifestPath | None = Field(
        default=None,
        description="CRDS cache directory (relative paths are relative to the manifest). Default: $CRDS_PATH.",
    )
    crds_server_url: str = Field(
        default="https://jwst-crds.stsci.edu",
        description="CRDS server used to fill the cache when crds_mode is 'remote' or 'auto'.",
    )
    crds_mode: Literal["auto", "local", "remote"] = Field(
        default="auto",
        description="'local' never contacts the server (the cache must hold the context); 'remote' syncs from it; "
        "'auto' lets crds decide.",
    )


class DataSource(StrictModel):
    source: Literal["mast", "local", "synthetic"] = Field(
        default="mast",
        description="'mast': exposures are downloaded from MAST by program id; 'local': uncal files already under "
        "path; "
        "'synthetic': the embedded synthetic program written by `hlsp simulate` under path.",
    )
    path: ManifestPath | None = Field(
        default=None,
        description="Directory of the raw exposures (relative to the manifest); required for 'local' and 'synthetic'.",
    )


class Program(StrictModel):
    """What was observed."""

    proposal_ids: list[Annotated[int, Field(ge=1, le=99999)]] = Field(
        min_length=1, description="JWST proposal (program) ids, e.g. [2107]."
    )
    instruments: list[Instrument] = Field(min_length=1, description="Instruments in the release: 'nircam', 'miri'.")
    bands: BandList = Field(description="Filters in the release, e.g. ['F200W', 'F300M', 'F770W'].")
    data: DataSource = Field(default_factory=DataSource, description="Where the raw exposures come from.")


class Observations(StrictModel):
    skip: list[FilePattern] = Field(
        default_factory=list, description="Exposure file-name patterns to leave out (fnmatch)."
    )
    include: list[FilePattern] = Field(
        default_factory=list, description="If given, only exposures matching one of these patterns are used."
    )


class MiriBackground(StrictModel):
    """Where the MIRI off-field (background) exposures of a target come from."""

    source: Literal["own", "borrowed", "both", "none"] = Field(
        default="own",
        description="'own': the target's own off-field exposures; 'borrowed': those of another target (borrow_from); "
        "'both': own and borrowed together; 'none': no background subtraction at level 2.",
    )
    borrow_from: TargetName | None = Field(
        default=None, description="Target whose off-field exposures are used ('borrowed' or 'both')."
    )
    observations: list[FilePattern] = Field(
        default_factory=list,
        description="Patterns selecting which of the lender's off-field exposures to use (default: all).",
    )


class ExternalImage(StrictModel):
    survey: str = Field(description="Name of the wide-field image, e.g. 'irac1', 'wise3'.")
    file: ManifestPath = Field(description="FITS file (relative to the manifest).")
    fwhm_arcsec: float = Field(gt=0, description="Beam FWHM of the image in arcsec.")
    bands: list[Band] = Field(
        default_factory=list,
        description="Bands this image anchors directly (their own mosaic fitted against it, before the internal fit "
        "against the reference band), e.g. ['F2100W'] for a 22-24 um image (MIPS24, WISE4). Empty: an image for "
        "the instrument's reference band.",
    )


class Anchoring(StrictModel):
    """Wide-field images that set the absolute background level, in order of preference."""

    nircam: list[ExternalImage] = Field(
        default_factory=list,
        description="For the NIRCam reference band (PHANGS: IRAC1 then WISE1), and for the bands an image lists.",
    )
    miri: list[ExternalImage] = Field(
        default_factory=list,
        description="For the MIRI reference band (PHANGS: IRAC4 then WISE3), and for the bands an image lists "
        "(e.g. a 22-24 um image for F2100W).",
    )


class ParameterLayers(StrictModel):
    """Step parameters at three levels of one scope; the more specific wins."""

    default: StageParameters = Field(default_factory=dict, description="For every band.")
    instrument: dict[Instrument, StageParameters] = Field(default_factory=dict, description="Per instrument.")
    band: Annotated[dict[Band, StageParameters], BeforeValidator(_unique_band_keys)] = Field(
        default_factory=dict, description="Per band."
    )


class Target(StrictModel):
    """One galaxy (or field) of the release."""

    designation: HeaderText | None = Field(
        default=None, description="Human-readable name (HLSPTARG keyword), e.g. 'NGC 628'. Default: the key."
    )
    ra: float = Field(ge=0, lt=360, description="Right ascension of the target centre, degrees (ICRS).")
    dec: float = Field(ge=-90, le=90, description="Declination of the target centre, degrees (ICRS).")
    bands: BandList | None = Field(
        default=None, description="Bands observed for this target (at least one). Default: all of program.bands."
    )
    observations: Observations = Field(default_factory=Observations, description="Exposures to skip or to restrict to.")
    miri_background: MiriBackground = Field(
        default_factory=MiriBackground, description="Where the MIRI off-field exposures come from."
    )
    parameters: ParameterLayers = Field(
        default_factory=ParameterLayers, description="Step parameters for this target only (highest precedence)."
    )
    anchoring: Anchoring = Field(default_factory=Anchoring, description="Wide-field images for background anchoring.")
    astrometry_catalog: Annotated[ManifestPath, AfterValidator(_check_catalog)] | None = Field(
        default=None,
        description="Absolute astrometric reference catalogue (file with RA/DEC columns, relative to the manifest).",
    )
    notes: list[str] = Field(default_factory=list, description="Changelog notes for this target in this release.")


class Products(StrictModel):
    convolved_fwhm_arcsec: list[Annotated[float, Field(gt=0, le=60)]] = Field(
        default_factory=lambda: [0.85, 0.90, 1.00],
        description="Gaussian resolutions (FWHM, arcsec) of the PSF-matched products; the paper's 0.85, 0.90, 1.00 "
        "by default.",
    )
    psf_path: ManifestPath | None = Field(
        default=None,
        description="Folder of the bands' PSFs for the PSF-matched products, one FITS per band named psf_<BAND>.fits "
        "(e.g. stpsf output: the image in the first HDU, its pixel scale in PIXELSCL, arcsec), relative to the "
        "manifest. "
        "Default for a synthetic program: its psf/ folder (the synthetic sky's PSFs).",
    )
    psfs: dict[Band, ManifestPath] = Field(
        default_factory=dict,
        description="PSF file of a band (relative to the manifest), over psf_path: e.g. {F2100W = "
        '"psf/F2100W_stpsf.fits"}.',
    )
    tweakback: bool = Field(
        default=True,
        description="Ship per-exposure files with the absolute astrometry back-propagated, as one tarball per target "
        "and band.",
    )
    previews: bool = Field(default=True, description="One PNG preview per mosaic.")
    max_level_uncertainty_mjysr: float = Field(
        default=0.5,
        gt=0,
        le=1e9,
        description="Largest level uncertainty (HLSPDBE, MJy/sr) a released mosaic may carry. An anchored band's "
        "is its fit's; a band that could not be anchored is released at its calibrated level and its uncertainty "
        "is the bound on the sky left in it (level matching's constant). `hlsp package` refuses and `hlsp "
        "validate` fails a band above it, naming it: raise it for that band in max_level_uncertainty_by_band "
        "to release it knowingly (the README states each band's level uncertainty).",
    )
    max_level_uncertainty_by_band: dict[Band, Annotated[float, Field(gt=0, le=1e9)]] = Field(
        default_factory=dict,
        description="max_level_uncertainty_mjysr of a band (MJy/sr), e.g. {F200W = 20.0}: what this release accepts "
        "for a band it could not anchor.",
    )

    def level_limit(self, band: str) -> float:
        """The largest level uncertainty (MJy/sr) this release accepts for ``band``."""
        return self.max_level_uncertainty_by_band.get(band.upper(), self.max_level_uncertainty_mjysr)


class ComparisonThresholds(StrictModel):
    """How far a band may move against the previous release (`hlsp validate --against`)."""

    max_shift_mas: float = Field(
        default=30.0,
        ge=0,
        description="Largest shift of a mosaic against its counterpart (cross-correlation), milliarcseconds.",
    )
    max_flux_ratio_change: float = Field(
        default=0.02,
        ge=0,
        description="Largest |flux ratio - 1| of the galaxy (the brighter half of the pixels, each above its faint "
        "level, once aligned).",
    )
    max_background_change_mjysr: float = Field(
        default=0.1, ge=0, description="Largest change of the level where the galaxy is faintest, MJy/sr."
    )


class ComparisonOverride(StrictModel):
    """Limits for one band, target or target/band (what this release is meant to change)."""

    max_shift_mas: float | None = Field(
        default=None, ge=0, description="As [comparisons.thresholds]; unset: inherited."
    )
    max_flux_ratio_change: float | None = Field(
        default=None, ge=0, description="As [comparisons.thresholds]; unset: inherited."
    )
    max_background_change_mjysr: float | None = Field(
        default=None, ge=0, description="As [comparisons.thresholds]; unset: inherited."
    )


class Comparisons(StrictModel):
    mast_mosaics: ManifestPath | None = Field(
        default=None, description="Directory of MAST level-3 mosaics to compare against (relative to the manifest)."
    )
    previous_release: ManifestPath | None = Field(
        default=None, description="Directory of the previous release to compare against (relative to the manifest)."
    )
    thresholds: ComparisonThresholds = Field(
        default_factory=ComparisonThresholds,
        description="How far a band may move against the previous release (`hlsp validate RELEASE --against "
        "PREVIOUS`).",
    )
    overrides: dict[str, ComparisonOverride] = Field(
        default_factory=dict,
        description="Limits per band ('F200W'), target ('ngc3627') or target and band ('ngc3627/F200W'), over the "
        "thresholds, "
        'e.g. a release that fixes one target\'s astrometry: {"ngc3627" = {max_shift_mas = 500}}.',
    )


class Patch(StrictModel):
    """A patch regenerates some targets of a parent release and inherits everything else."""

    parent: ManifestPath = Field(description="The parent release's manifest file (relative to this manifest).")
    targets: list[TargetName] = Field(
        min_length=1, description="Targets this patch regenerates; each must be in the parent."
    )
    instruments: list[Instrument] | None = Field(
        default=None, description="Limit the regeneration to these instruments."
    )
    bands: BandList | None = Field(default=None, description="Limit the regeneration to these bands.")


class Manifest(StrictModel):
    """A release manifest (after a patch has been merged onto its parent)."""

    schema_version: Literal[1] = Field(default=1, description="Version of this manifest format.")
    release: Release = Field(description="What is released, by whom, under which licence.")
    pins: Pins = Field(description="jwst version and CRDS context every product is made with.")
    program: Program = Field(description="The observing program(s): proposal ids, instruments, bands, data location.")
    targets: dict[TargetName, Target] = Field(
        min_length=1, description="The targets, keyed by their MAST-safe lower-case name."
    )
    parameters: ParameterLayers = Field(
        default_factory=ParameterLayers, description="Step parameters for every target."
    )
    products: Products = Field(default_factory=Products, description="What goes out besides the mosaics.")
    comparisons: Comparisons = Field(
        default_factory=Comparisons, description="MAST mosaics and the previous release to compare against."
    )
    patch: Patch | None = Field(default=None, description="Required when release.kind = 'patch'.")

    # -- derived facts ---------------------------------------------------------------------
    def target_bands(self, target: str) -> list[str]:
        t = self.targets[target]
        return list(t.bands) if t.bands is not None else list(self.program.bands)

    def regenerates(self, target: str, band: str) -> bool:
        """Whether this release makes the target's band (every band of a full release; for a
        patch, the targets, instruments and bands of [patch]; the rest is the parent's)."""
        if self.patch is None:
            return True
        from processing.instruments import instrument_of

        return (
            target in self.patch.targets
            and (not self.patch.instruments or instrument_of(band) in self.patch.instruments)
            and (not self.patch.bands or band.upper() in self.patch.bands)
        )

    def written(self) -> dict[str, Any]:
        """What the release team wrote (patch inheritance resolved), as validated: every setting
        given in the file, none filled in by a default (the resolved values, defaults included,
        are the model itself and each product's provenance)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def canonical_json(self) -> str:
        """The manifest's identity as canonical JSON: the schema version and :meth:`written`."""
        return json.dumps(
            {"schema_version": SCHEMA_VERSION, "manifest": self.written()}, sort_keys=True, separators=(",", ":")
        )

    def content_hash(self) -> str:
        """sha256 of :meth:`canonical_json` (HLSPMANI): formatting, comments and the defaults of
        settings the manifest does not give do not change it, so a field added to the schema with
        a default keeps every earlier manifest's identity (and its releases valid)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Version helpers
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Cross-field checks (a plain function: full control of the key paths, all problems at once)
# --------------------------------------------------------------------------------------------


def _cross_check(m: Manifest) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    rel = m.release
    if rel.previous is not None and version_tuple(rel.previous) >= version_tuple(rel.version):
        problems.append(("release.previous", f"{rel.previous} is not lower than release.version {rel.version}"))
    if rel.kind == "patch" and m.patch is None:
        problems.append(
            ("patch", "release.kind is 'patch' but there is no [patch] table naming the parent and targets")
        )
    if rel.kind == "full" and m.patch is not None:
        problems.append(("release.kind", "a [patch] table is given, so release.kind must be 'patch'"))

    insts = set(m.program.instruments)
    for i, band in enumerate(m.program.bands):
        inst = instrument_of(band)
        if inst not in insts:
            problems.append(
                (f"program.bands[{i}]", f"{band} is a {inst} filter but program.instruments is {sorted(insts)}")
            )
    if len(set(m.program.bands)) != len(m.program.bands):
        problems.append(("program.bands", "lists a band twice"))
    fv = file_version(rel.version)
    if len(fv) > 9:
        problems.append(
            (
                "release.version",
                f"{rel.version} gives the file-name version '{fv}', longer than the 9 characters MAST allows",
            )
        )
    data = m.program.data
    if data.source in ("local", "synthetic") and not data.path:
        problems.append(("program.data.path", f"is required when program.data.source is '{data.source}'"))

    problems += _check_layers(m.parameters, "parameters", m.program.bands, insts)

    for name, t in m.targets.items():
        base = f"targets.{name}"
        if t.bands is not None:
            if len(set(t.bands)) != len(t.bands):
                problems.append((f"{base}.bands", "lists a band twice"))
            for i, band in enumerate(t.bands):
                if band not in m.program.bands:
                    problems.append(
                        (f"{base}.bands[{i}]", f"{band} is not in program.bands{did_you_mean(band, m.program.bands)}")
                    )
        problems += _check_layers(t.parameters, f"{base}.parameters", m.target_bands(name), insts)
        bg = t.miri_background
        if bg.source in ("borrowed", "both"):
            if bg.borrow_from is None:
                problems.append((f"{base}.miri_background.borrow_from", f"is required when source is '{bg.source}'"))
            elif bg.borrow_from == name:
                problems.append((f"{base}.miri_background.borrow_from", "a target cannot borrow from itself"))
            elif bg.borrow_from not in m.targets:
                problems.append(
                    (
                        f"{base}.miri_background.borrow_from",
                        f"'{bg.borrow_from}' is not a target of this manifest{did_you_mean(bg.borrow_from, m.targets)}",
                    )
                )
            elif not any(instrument_of(b) == "miri" for b in m.target_bands(bg.borrow_from)):
                problems.append(
                    (
                        f"{base}.miri_background.borrow_from",
                        f"'{bg.borrow_from}' has no MIRI bands to lend off-field exposures from",
                    )
                )
        elif bg.borrow_from is not None or bg.observations:
            problems.append(
                (
                    f"{base}.miri_background.source",
                    f"is '{bg.source}' but borrow_from/observations are set; use 'borrowed' or 'both'",
                )
            )
        for inst in ("nircam", "miri"):
            if getattr(t.anchoring, inst) and inst not in insts:
                problems.append((f"{base}.anchoring.{inst}", f"{inst} is not in program.instruments"))
            for i, image in enumerate(getattr(t.anchoring, inst)):
                for j, b in enumerate(image.bands):
                    if instrument_of(b) != inst:
                        problems.append((f"{base}.anchoring.{inst}[{i}].bands[{j}]", f"{b} is not a {inst} band"))
                    elif b not in m.target_bands(name):
                        problems.append(
                            (f"{base}.anchoring.{inst}[{i}].bands[{j}]", f"{b} is not a band of target '{name}'")
                        )
    problems += _borrow_cycles(m)

    if m.patch is not None:
        for i, tname in enumerate(m.patch.targets):
            if tname not in m.targets:
                problems.append(
                    (
                        f"patch.targets[{i}]",
                        f"'{tname}' is not a target of the parent release{did_you_mean(tname, m.targets)}",
                    )
                )
        for i, inst in enumerate(m.patch.instruments or []):
            if inst not in insts:
                problems.append((f"patch.instruments[{i}]", f"{inst} is not in program.instruments"))
        if m.patch.bands and len(set(m.patch.bands)) != len(m.patch.bands):
            problems.append(("patch.bands", "lists a band twice"))
        for i, band in enumerate(m.patch.bands or []):
            if band not in m.program.bands:
                problems.append((f"patch.bands[{i}]", f"{band} is not in program.bands"))

    if len(m.products.convolved_fwhm_arcsec) != len(set(m.products.convolved_fwhm_arcsec)):
        problems.append(("products.convolved_fwhm_arcsec", "lists a resolution twice"))
    else:
        from processing.psf_matching.stage import variant_name

        names = ["img-" + variant_name(f) for f in m.products.convolved_fwhm_arcsec]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(
                (
                    "products.convolved_fwhm_arcsec",
                    f"two resolutions share the product name {name} (names keep two decimals of arcsec)",
                )
            )
    for key in m.comparisons.overrides:
        target, _, band = key.partition("/")
        ok = (key.upper() in m.program.bands) or (target in m.targets and (not band or band.upper() in m.program.bands))
        if not ok:
            problems.append(
                (f"comparisons.overrides.{key}", "is not a band of program.bands, a target, or target/BAND")
            )
    for field_name in ("psfs", "max_level_uncertainty_by_band"):
        for band in getattr(m.products, field_name):
            if band not in m.program.bands:
                problems.append((f"products.{field_name}.{band}", f"{band} is not in program.bands"))
    return problems


def _check_layers(layers: ParameterLayers, path: str, bands: list[str], insts: set[str]) -> list[tuple[str, str]]:
    from processing.registry import check_stage_parameters

    problems = check_stage_parameters(layers.default, f"{path}.default")
    for inst, stages in layers.instrument.items():
        if inst not in insts:
            problems.append((f"{path}.instrument.{inst}", f"{inst} is not in program.instruments"))
        problems += check_stage_parameters(stages, f"{path}.instrument.{inst}")
    for band, stages in layers.band.items():
        if band not in bands:
            problems.append((f"{path}.band.{band}", f"{band} is not a band of this scope{did_you_mean(band, bands)}"))
        problems += check_stage_parameters(stages, f"{path}.band.{band}")
    return problems


def _borrow_cycles(m: Manifest) -> list[tuple[str, str]]:
    edges = {
        n: t.miri_background.borrow_from
        for n, t in m.targets.items()
        if t.miri_background.source in ("borrowed", "both") and t.miri_background.borrow_from in m.targets
    }
    problems, reported = [], set()
    for start in sorted(edges):
        chain, node = [start], edges[start]
        while node in edges and node not in chain:
            chain.append(node)
            node = edges[node]
        if node in chain:
            cycle = chain[chain.index(node) :]
            key = frozenset(cycle)
            if key not in reported:
                reported.add(key)
                loop = " -> ".join(cycle + [node])
                problems.append((f"targets.{cycle[0]}.miri_background.borrow_from", f"borrowing forms a cycle: {loop}"))
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        # pydantic appends the validator's name to the location of Annotated/dict-key errors.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "unknown_key":
            loc = loc + (err["ctx"]["key"],)
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"].startswith("literal_error"):
            msg = f"{err['input']!r} is not allowed: {msg.replace('Input should be ', 'expected ')}"
        elif err["type"] in ("bool_type", "float_type", "int_type", "list_type", "dict_type", "string_type"):
            need = {
                "bool_type": "a boolean (true or false)",
                "float_type": "a number",
                "int_type": "an integer",
                "list_type": "a list",
                "dict_type": "a table",
                "string_type": "a string",
            }[err["type"]]
            hint = (
                " (write it without quotes)" if isinstance(err["input"], str) and err["type"] != "string_type" else ""
            )
            msg = f"{err['input']!r} is {type(err['input']).__name__}; {need} is needed{hint}"
        problems.append((_format_loc(loc), msg))
    return problems


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(str(path), [("", "file not found")]) from None
    except OSError as exc:
        raise ManifestError(str(path), [("", f"cannot be read: {exc.strerror}")]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(str(path), [("", "is not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(str(path), [("", f"is not valid TOML: {exc}")]) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def path_fields(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Dotted names of every setting marked :data:`ManifestPath` (``*`` for a table's keys or a
    list's items), found from the models alone: e.g. ``targets.*.anchoring.nircam.*.file``."""
    out: list[str] = []

    def walk(annotation, metadata, where: str) -> None:
        if any(isinstance(m, PathSetting) for m in metadata):
            out.append(where)
            return
        for kind, inner, meta in _inner_types(annotation):
            if kind == "model":
                for name, f in inner.model_fields.items():
                    walk(f.annotation, f.metadata, f"{where}.{name}" if where else name)
            elif kind in ("dict", "list"):
                walk(inner, meta, f"{where}.*")
            else:
                walk(inner, meta, where)

    walk(model or Manifest, [], prefix)
    return sorted(set(out))


def _inner_types(annotation) -> list[tuple[str, Any, list]]:
    """What a field's type holds: ``("model", cls, [])``, ``("dict"/"list", value type, [])``, or
    ``("type", inner, metadata)`` for an ``Annotated`` or a union member."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return [("type", args[0], list(annotation.__metadata__))]
    if origin in (typing.Union, types.UnionType):
        return [("type", a, []) for a in args if a is not type(None)]
    if origin is dict:
        return [("dict", args[1], [])]
    if origin is list:
        return [("list", args[0], [])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("model", annotation, [])]
    return []


def _map_paths(data: dict, fn) -> None:
    """Replace, in a raw manifest dict (in place), every path setting's value ``v`` by ``fn(v)``:
    the settings :func:`path_fields` finds, wherever they are present."""

    def visit(value, parts: list[str]):
        if not parts:
            return fn(value) if isinstance(value, str) else value
        head, rest = parts[0], parts[1:]
        if head == "*":
            if isinstance(value, dict):
                return {k: visit(v, rest) for k, v in value.items()}
            if isinstance(value, list):
                return [visit(v, rest) for v in value]
            return value
        if isinstance(value, dict) and head in value:
            value[head] = visit(value[head], rest)
        return value

    for dotted in path_fields():
        visit(data, dotted.split("."))


def _rebase_paths(data: dict, src_dir: Path, dest_dir: Path) -> dict:
    """A copy of ``data`` whose relative path settings, meant from ``src_dir``, work from ``dest_dir``."""
    import os

    def rebase(value: str) -> str:
        p = Path(value).expanduser()
        return (
            value if p.is_absolute() else Path(os.path.relpath((src_dir / p).resolve(), dest_dir.resolve())).as_posix()
        )

    out = copy.deepcopy(data)
    _map_paths(out, rebase)
    return out


def _normalise_parameters(m: Manifest) -> Manifest:
    """The manifest with every step parameter as the stage will receive it (ints for floats
    become floats): the value that reaches a stage, the content hash and the cache keys are
    those of the validated value."""
    from processing.registry import normalise_stage_parameters

    # only what was set: validating it again keeps the same settings set (the identity)
    data = m.model_dump(mode="python", exclude_unset=True)

    def fix(layers: dict | None) -> None:
        if not layers:
            return
        if "default" in layers:
            layers["default"] = normalise_stage_parameters(layers["default"], "")[1]
        for scope in ("instrument", "band"):
            if scope in layers:
                layers[scope] = {k: normalise_stage_parameters(v, "")[1] for k, v in layers[scope].items()}

    fix(data.get("parameters"))
    for t in (data.get("targets") or {}).values():
        fix(t.get("parameters"))
    return Manifest.model_validate(data)


class LoadedManifest:
    """A validated manifest and where it came from."""

    def __init__(self, manifest: Manifest, path: Path, parent: LoadedManifest | None = None):
        self.manifest = manifest
        self.path = path
        self.parent = parent

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str | None) -> Path | None:
        """A manifest path setting as an absolute path (relative to the manifest's folder)."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()


def _raw_with_parent(path: Path, seen: tuple[Path, ...]) -> tuple[dict, LoadedManifest | None]:
    data = read_toml(path)
    patch = data.get("patch")
    if not isinstance(patch, dict) or "parent" not in patch:
        return data, None
    parent_path = Path(str(patch["parent"])).expanduser()
    if not parent_path.is_absolute():
        parent_path = (path.parent / parent_path).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ManifestError(str(path), [("patch.parent", f"{parent_path} leads back to itself (a patch cycle)")])
    if not parent_path.exists():
        raise ManifestError(str(path), [("patch.parent", f"parent manifest {parent_path} does not exist")])
    parent = _load(parent_path, seen + (path.resolve(),))
    # the parent's relative paths are meant from the parent's folder, not the patch's
    # (what the parent's file set, not its defaults: the patch's identity is what was written)
    merged = _rebase_paths(parent.manifest.written(), parent_path.parent, path.parent)
    merged.pop("patch", None)
    # A patch inherits everything but its own release identity and the [patch] table.
    merged["release"].pop("previous", None)
    merged["release"]["changes"] = []
    merged["release"]["previous"] = parent.manifest.release.version
    # Targets a patch mentions must already exist in the parent.
    problems = [
        (
            f"targets.{t}",
            f"'{t}' is not a target of the parent release {parent_path.name}{did_you_mean(t, parent.manifest.targets)}",
        )
        for t in (data.get("targets") or {})
        if t not in parent.manifest.targets
    ]
    if problems:
        raise ManifestError(str(path), problems)
    return _deep_merge(merged, data), parent


def _load(path: Path, seen: tuple[Path, ...] = ()) -> LoadedManifest:
    path = Path(path).expanduser().resolve()
    data, parent = _raw_with_parent(path, seen)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(str(path), _pydantic_problems(exc)) from None
    problems = _cross_check(manifest)
    if parent is not None and manifest.release.project != parent.manifest.release.project:
        problems.append(
            ("release.project", f"a patch must keep the parent's project id '{parent.manifest.release.project}'")
        )
    if problems:
        raise ManifestError(str(path), problems)
    return LoadedManifest(_normalise_parameters(manifest), path, parent)


def load_release_manifest(release: str | Path) -> Manifest:
    """The validated manifest a release folder was made from (its ``*_manifest.toml``; a patch
    also carries its parents': the newest is its own). ValueError when there is none."""
    import tomllib

    found = [
        Manifest.model_validate(tomllib.loads(p.read_text())) for p in sorted(Path(release).glob("*_manifest.toml"))
    ]
    if not found:
        raise ValueError(f"{release}: no *_manifest.toml (not a release folder of this system)")
    return max(found, key=lambda m: version_tuple(m.release.version))


def load_manifest(path: str | Path) -> LoadedManifest:
    """Read, merge (for a patch) and validate a manifest file. Raises ManifestError."""
    return _load(Path(path))


def manifest_json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "JWST HLSP release manifest"
    return schema


__all__ = [
    "INSTRUMENTS",
    "FILTERS",
    "LoadedManifest",
    "Manifest",
    "SCHEMA_VERSION",
    "file_version",
    "load_manifest",
    "manifest_json_schema",
    "version_tuple",
]
