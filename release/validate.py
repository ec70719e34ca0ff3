"""`hlsp validate RELEASE_DIR`: the CI gate for a release.

Checks, each reported per file with the problem named. Generic, for every release:

- the folder holds regular files and folders only: a symbolic link anywhere is a failure
  (and is never followed); every file is world-readable and every folder world-listable;
- every file name follows MAST's rules, and per-target files sit in their target's folder;
- the release manifest (``*_manifest.toml``) is there and parses; the files of the release are
  exactly its units (release/products/: every one there, nothing else; a patch's files of
  what it does not remake carry a parent's version); every file's product type is declared;
- every FITS file is FITS by its first bytes (gzip bytes named .fits are refused), opens, its
  CHECKSUM/DATASUM match on every HDU, ``fitsverify`` reports no error and no warning (where it
  is not installed the check is reported as not run, and ``--strict``, the default under CI,
  fails it), MAST's primary keywords are there and consistent (release/products/headers.py),
  and it says it was made from the release manifest (HLSPMANI = its identity; HLSPID,
  HLSPTARG, RA_TARG/DEC_TARG as the manifest says); SIMULATD = T in a simulated release;
- then each file's own checks, as its product type declares them (release/products/: the
  mosaic's extensions and grid, a PSF-matched mosaic's beam, a tarball's members, a table's
  bands, the README's version, the manifest CSV's sizes and sha256);
- a patch release with ``--against PARENT``: every carried file byte-identical to the
  parent's file of that name;
- with ``--against PREVIOUS``: PREVIOUS is an earlier release of the same project (or a folder
  of MAST level-3 mosaics) sharing at least one target and band, else a failure naming why;
  this release itself is reported as not compared; each mosaic against the same product of
  PREVIOUS: shift, flux ratio and background change within the release manifest's
  ``[comparisons.thresholds]`` and overrides (release/compare.py).

Each finding has a class, and the exit code says the most serious class that failed (CI jobs
branch on it; docs/ci.md):

==== ==================================================================================
code meaning
==== ==================================================================================
0    valid (checks that could not run are listed; ``--strict`` fails them)
1    the release breaks a rule (class ``rule``): a file, name, header, checksum, the manifest
2    bad input: the folder or an option is wrong (the command names it; nothing was checked)
3    the release is valid but moved more than its manifest allows against ``--against``, or
     is not comparable with it (class ``comparison``)
4    only checks that could not run failed, under ``--strict`` (class ``not run``: a tool
     such as fitsverify is missing on this machine; the release itself may be fine)
==== ==================================================================================

:meth:`Report.junit`, :meth:`Report.summary` (JSON, one entry per failed check) and
:meth:`Report.github` (GitHub Actions annotation lines) give the findings to CI systems.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from processing.fileio import file_sha256
from release.naming import check_name, parse_name
from release.products import CheckContext, ProductTypes
from release.products.registry import default_product_types


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def strict_by_default() -> bool:
    """``--strict`` is the default where the environment says CI (``CI=true``, as CI systems set)."""
    return _truthy(os.environ.get("CI"))


def fitsverify_executable() -> str | None:
    return shutil.which("fitsverify")


#: finding class -> the exit code of a release whose most serious failure is of that class
EXIT_CODES = {"rule": 1, "comparison": 3, "not run": 4}
#: the JSON summary's format (docs/ci.md describes it)
SUMMARY_VERSION = 1


@dataclass
class Finding:
    file: str
    check: str
    ok: bool
    message: str = ""
    skipped: bool = False
    #: rule | comparison | not run (see the module docstring)
    kind: str = "rule"


@dataclass
class Report:
    root: Path
    strict: bool = False
    findings: list[Finding] = field(default_factory=list)
    #: a patch release's parents' manifests, by file version (their carried files were made from them)
    carried_manifests: dict = field(default_factory=dict)
    #: with --against: what the previous side is (release/compare.py Side)
    against: object | None = None

    def add(self, file: str, check: str, problem: str | None = None, kind: str = "rule") -> None:
        self.findings.append(Finding(file, check, problem is None, problem or "", kind=kind))

    def skip(self, file: str, check: str, why: str) -> None:
        """A check that could not run. Under ``strict`` that is a failure."""
        if self.strict:
            self.add(file, check, f"not run: {why}; --strict (the default under CI) requires every check", "not run")
        else:
            self.findings.append(Finding(file, check, True, why, skipped=True, kind="not run"))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def skipped(self) -> list[Finding]:
        return [f for f in self.findings if f.skipped]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when valid, else the code of the most serious failed class (:data:`EXIT_CODES`)."""
        failed = {f.kind for f in self.failures}
        return next((code for kind, code in EXIT_CODES.items() if kind in failed), 0)

    def summary(self) -> dict:
        """The findings for a CI system (``--format json`` / ``--json``): counts, and one entry
        per failed check and per check that could not run (file relative to the release
        folder, ``.`` for the release as a whole)."""
        entry = lambda f: {"file": f.file, "check": f.check, "class": f.kind, "message": f.message}  # noqa: E731
        return {
            "schema_version": SUMMARY_VERSION,
            "release": str(self.root),
            "valid": self.ok,
            "exit_code": self.exit_code,
            "strict": self.strict,
            "files": len({f.file for f in self.findings if f.file != "."}),
            "checks": len(self.findings),
            "passed": sum(f.ok and not f.skipped for f in self.findings),
            "failed": len(self.failures),
            "not_run": len(self.skipped),
            "failures": [entry(f) for f in self.failures],
            "not_run_checks": [entry(f) for f in self.skipped],
        }

    def github(self, shown_root: str | None = None) -> str:
        """GitHub Actions workflow commands: an ``::error`` line per failed check, with
        ``file=`` the path as shown from the job's working folder (``shown_root``: the release
        folder as given), so the annotation links to it; one ``::warning`` per check (and
        reason) that could not run, with the number of files."""

        def prop(value: str) -> str:
            return (
                value.replace("%", "%25")
                .replace("\r", "%0D")
                .replace("\n", "%0A")
                .replace(":", "%3A")
                .replace(",", "%2C")
            )

        def data(value: str) -> str:
            return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

        root = (shown_root if shown_root is not None else str(self.root)).rstrip("/")
        lines = []
        for f in self.failures:
            where = root if f.file == "." else f"{root}/{f.file}"
            title = f"hlsp validate: {f.check}" + ("" if f.kind == "rule" else f" ({f.kind})")
            lines.append(f"::error file={prop(where)},title={prop(title)}::{data(f.message)}")
        # checks that could not run (not a failure without --strict): one warning per check and reason
        skipped: dict[tuple[str, str], int] = {}
        for f in self.skipped:
            skipped[(f.check, f.message)] = skipped.get((f.check, f.message), 0) + 1
        for (check, why), n in sorted(skipped.items()):
            title = f"hlsp validate: {check} (not run)"
            lines.append(f"::warning file={prop(root)},title={prop(title)}::not run on {n} file(s): {data(why)}")
        return "\n".join(lines) + ("\n" if lines else "")

    def junit(self) -> str:
        from xml.sax.saxutils import escape, quoteattr

        by_file: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_file.setdefault(f.file, []).append(f)
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name={quoteattr("hlsp validate " + str(self.root))} tests="{len(self.findings)}" '
            f'failures="{len(self.failures)}" skipped="{len(self.skipped)}">',
        ]
        for file, fs in sorted(by_file.items()):
            fails = sum(not f.ok for f in fs)
            skips = sum(f.skipped for f in fs)
            out.append(f'  <testsuite name={quoteattr(file)} tests="{len(fs)}" failures="{fails}" skipped="{skips}">')
            for f in fs:
                out.append(f"    <testcase classname={quoteattr(file)} name={quoteattr(f.check)}>")
                if not f.ok:
                    out.append(f"      <failure message={quoteattr(f.message)}>{escape(f.message)}</failure>")
                elif f.skipped:
                    out.append(f"      <skipped message={quoteattr(f.message)}/>")
                out.append("    </testcase>")
            out.append("  </testsuite>")
        out.append("</testsuites>")
        return "\n".join(out) + "\n"


def _walk(report: Report, root: Path) -> dict[str, Path]:
    """Regular files of the release by relative path; links and special files are reported,
    never followed; modes are checked (a release is for others to read)."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        mode = os.lstat(here).st_mode
        if mode & 0o005 != 0o005:
            report.add(rel_dir, "world-readable", f"folder mode {stat.filemode(mode)}: others cannot list it")
        for name in sorted(dirnames + filenames):
            p = here / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                report.add(
                    rel,
                    "no symbolic links",
                    f"is a symbolic link (to {os.readlink(p)}): a release holds files, "
                    "never links, and validation does not follow it",
                )
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                report.add(rel, "regular file", f"is not a regular file ({stat.filemode(st.st_mode)})")
            else:
                files[rel] = p
                report.add(
                    rel,
                    "world-readable",
                    None
                    if st.st_mode & 0o004
                    else f"mode {stat.filemode(st.st_mode)}: others cannot read it (a release is for others)",
                )
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return dict(sorted(files.items()))


def _load_release_manifest(report: Report, rels: dict[str, Path]):
    """The release manifest shipped in the release, or None (reported). A patch also carries
    its parent's manifest (and theirs): the release's own is the newest; the others must be
    its parents'. They are kept in ``report.carried_manifests`` by file version."""
    import tomllib

    from pydantic import ValidationError

    from release.manifest import Manifest, file_version

    tomls = [r for r in rels if r.endswith("_manifest.toml") and "/" not in r]
    if not tomls:
        report.add(
            ".",
            "release manifest present",
            "expected one *_manifest.toml (the release manifest) at the top, found none",
        )
        return None, None

    def name_version(rel: str) -> tuple:
        parsed = parse_name(rel)
        return tuple(int(x) for x in re.findall(r"\d+", parsed.version)) if parsed else ()

    # the release's own manifest: the newest by file name; a parent's that does not parse is
    # reported on its own and does not hide the release's
    own_name = max(tomls, key=name_version)
    loaded = {}
    for rel in sorted(tomls, key=lambda r: r != own_name):
        try:
            loaded[rel] = Manifest.model_validate(tomllib.loads(rels[rel].read_text()))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as exc:
            report.add(
                rel, "release manifest readable", f"is not a valid release manifest: {' '.join(str(exc).split())[:300]}"
            )
            if rel == own_name:
                return None, None
    own = own_name
    m = loaded[own]
    report.add(own, "release manifest readable")
    chain, cur = set(), m
    while cur is not None and cur.release.kind == "patch" and cur.release.previous:
        parent = next((x for x in loaded.values() if x.release.version == cur.release.previous), None)
        if parent is not None:
            chain.add(file_version(parent.release.version))
        cur = parent
    for rel, x in loaded.items():
        if rel == own:
            continue
        fv = file_version(x.release.version)
        report.add(
            rel,
            "parent manifest",
            None
            if fv in chain
            else f"a second release manifest ({x.release.version}) that is not a parent of this patch release "
            f"{m.release.version}",
        )
        report.carried_manifests[fv] = x
    return m, own


def validate_release(
    root: str | Path,
    use_fitsverify: bool = True,
    strict: bool = False,
    against: str | Path | None = None,
    figures: str | Path | None = None,
    registry: ProductTypes | None = None,
    stages=None,
) -> Report:
    """Every check of the module docstring; with ``against`` (the previous release, or a
    folder of MAST-like level-3 mosaics) also each mosaic against its counterpart, within the
    limits of the release manifest's ``[comparisons]`` (release/compare.py); ``figures``: a
    folder for the comparison figures and table. ``registry``/``stages``: the product types
    and the stage registry (default: this system's): what a file is, and its checks, come
    from its product type's declaration (release/products/)."""
    root = Path(root)
    registry = registry or default_product_types()
    report = Report(root, strict=strict)
    if not root.is_dir():
        report.add(str(root), "release folder", "is not a folder")
        return report
    root = root.resolve()  # the path given may be a link; nothing inside it may
    rels = _walk(report, root)
    for rel, p in rels.items():
        problems = check_name(p.name)
        report.add(rel, "MAST file name", "; ".join(problems) if problems else None)
        parsed = parse_name(p.name)
        if parsed and parsed.target != "all":
            folder = Path(rel).parent.as_posix()
            report.add(
                rel,
                "target folder",
                None
                if folder == parsed.target
                else f"is a product of target '{parsed.target}' but sits in folder '{folder}'",
            )
    release_manifest, toml_rel = _load_release_manifest(report, rels)
    ctx = CheckContext(report, root, rels, release_manifest)
    if release_manifest is not None:
        _check_coverage(report, release_manifest, toml_rel, rels, registry, stages)
    flags: dict[str, bool | str | None] = {}
    for rel, p in rels.items():
        parsed = parse_name(p.name)
        ptype = registry.match(parsed.product, parsed.ext) if parsed else None
        if parsed is not None and ptype is None:
            report.add(rel, "product type", f"'{parsed.product}' ({parsed.ext}) is not a product type of this system")
        if p.name.endswith((".fits", ".fits.gz")):
            flags[rel] = _check_fits(ctx, rel, p, use_fitsverify, ptype)
        elif ptype is not None:
            for check in ptype.checks:
                check(ctx, rel, p, None)
    if against is not None and release_manifest is not None:
        _check_against(report, root, Path(against), release_manifest, figures)
    readmes = [r for r in rels if r.endswith("_readme.txt") and "/" not in r]
    readme_sim = bool(readmes) and "SIMULATED DATA" in rels[readmes[0]].read_text(errors="replace")
    any_sim = any(v is True for v in flags.values())
    if any_sim and readmes:
        report.add(
            readmes[0],
            "README says simulated",
            None if readme_sim else "the products are SIMULATD = T but the README does not say so",
        )
    if readme_sim or any_sim:
        for rel, v in flags.items():
            if v != "unreadable":
                report.add(
                    rel,
                    "SIMULATD",
                    None if v is True else "SIMULATD missing or F in a release made from simulated data",
                )
    return report


def _check_against(report: Report, root: Path, previous: Path, m, figures) -> None:
    """Each mosaic of the release against its counterpart in ``previous`` (release/compare.py),
    within the manifest's limits; a mosaic without one is reported as not compared.

    ``previous`` must be comparable: an earlier release of the same project, or a folder of
    level-3 mosaics, sharing at least one target and band; this release itself (the same
    folder, or the same project and version) is reported as not compared."""
    from release.compare import check, compare, limits_for, side_of
    from release.manifest import version_tuple

    label = previous.name or str(previous)
    check_name = f"against {label}"
    try:
        side = side_of(previous)
    except ValueError as exc:
        report.add(".", check_name, str(exc), kind="comparison")
        return
    report.against = side
    if side.kind == "unknown":
        report.add(
            ".",
            check_name,
            f"{previous} is neither a release nor a folder of level-3 mosaics: nothing to compare",
            kind="comparison",
        )
        return
    if side.kind == "release":
        if side.project != m.release.project:
            report.add(
                ".",
                check_name,
                f"{previous} is a release of {side.project}, not of {m.release.project}: not comparable",
                kind="comparison",
            )
            return
        if root.resolve() == previous.resolve():
            report.skip(".", check_name, f"{previous} is this release itself ({side.version}): nothing was compared")
            return
        if version_tuple(side.version) > version_tuple(m.release.version):
            report.add(
                ".",
                check_name,
                f"{previous} is version {side.version}, later than this release's {m.release.version}: "
                "--against takes the previous release",
                kind="comparison",
            )
            return
    if report.carried_manifests:  # a patch: what it carries over must be its parent's very bytes
        from release.manifest import file_version

        fv = file_version(m.release.version)
        for p in sorted(root.rglob("*")):
            parsed = parse_name(p.name)
            if not p.is_file() or parsed is None or parsed.version == fv:
                continue
            rel = p.relative_to(root).as_posix()
            theirs = previous / rel
            report.add(
                rel,
                f"carried over from {label}",
                None
                if theirs.is_file() and file_sha256(theirs) == file_sha256(p)
                else (
                    f"is not in {previous}"
                    if not theirs.is_file()
                    else f"differs from {label}'s file of that name (sha256)"
                ),
            )
    numbers, skipped = compare(
        root,
        previous,
        Path(figures) if figures else None,
        label_a=f"{root.name} (this release)",
        label_b=f"{label} (previous)",
    )
    by_name = {p.name: p for p in root.rglob("*.fits")}
    if not numbers:
        report.add(
            ".", check_name, f"nothing in common with {side.describe()}: no target and band compared", kind="comparison"
        )
        return
    for why in skipped:
        report.skip(".", f"against {label}", why)
    for n in numbers:
        rel = by_name[n.a].relative_to(root).as_posix()
        problems = check(n, limits_for(m.comparisons, n.target, n.band))
        report.add(rel, f"against {label}", "; ".join(problems) if problems else None, kind="comparison")


def _check_coverage(
    report: Report, m, toml_rel: str, rels: dict[str, Path], registry: ProductTypes, stages=None
) -> None:
    """The files of the release are exactly its manifest's units (release/products/: computed
    once, as packaging and ``hlsp check`` compute them): each is there, nothing else is. A
    patch release's files of what it does not remake carry a parent's version (one of the
    parent manifests it ships); what it remakes carries its own."""
    from release.manifest import file_version

    fv = file_version(m.release.version)
    parents = sorted(report.carried_manifests)
    allowed: dict[tuple, list[str]] = {}
    for u in registry.units(m, stages):
        versions = [fv] if u.ptype.per == "release" or u.regenerated(m) or not parents else parents
        # a type a patch keeps beside its own (the parent's release manifests): theirs allowed too
        allowed[(u.target, u.filter, u.product, u.ptype.ext)] = versions + (
            parents if u.ptype.on_patch == "keep" and u.ptype.per == "release" else []
        )
        rels_of = [f"{u.folder()}/{u.name(m.release.project, v)}".lstrip("/") for v in versions]
        found = next((r for r in rels_of if r in rels), None)
        if u.band is not None:
            what = f"{u.target} {u.band} is in the release manifest {toml_rel} but its {u.product} file is missing"
        elif u.target != "all":
            what = f"{u.target}: the {u.product} table is missing"
        else:
            what = f"the release's {u.product} file (.{u.ptype.ext}) is missing"
        report.add(found or rels_of[0], "release manifest coverage", None if found else what)
    bands = {t: {b.lower() for b in m.target_bands(t)} for t in m.targets}
    for rel in rels:
        parsed = parse_name(Path(rel).name)
        if parsed is None:
            continue
        versions = allowed.get((parsed.target, parsed.filter, parsed.product, parsed.ext))
        if versions is None:
            if parsed.target != "all" and (
                parsed.target not in m.targets
                or (parsed.filter != "multi" and parsed.filter not in bands[parsed.target])
            ):
                why = (
                    f"target '{parsed.target}' band '{parsed.filter.upper()}' is not in the release manifest {toml_rel}"
                )
            else:
                why = f"a {parsed.product} file is not a product of the release manifest {toml_rel}"
            report.add(rel, "release manifest coverage", why)
            continue
        if parsed.project != m.release.project or parsed.version not in versions:
            report.add(
                rel,
                "release manifest coverage",
                f"project/version '{parsed.project}' {parsed.version} differ from the release manifest's "
                f"{m.release.project} {' or '.join(versions)}",
            )


def _check_fits(ctx: CheckContext, rel: str, path: Path, use_fitsverify: bool, ptype=None) -> bool | str | None:
    """Every FITS file of a release: FITS by its first bytes, readable, CHECKSUM/DATASUM, the
    FITS standard (astropy, then fitsverify), MAST's primary keywords, made from the release
    manifest; then the checks its product type declares (``ptype.checks``, given the open
    file). Returns its SIMULATD flag (None if absent, 'unreadable')."""
    from astropy.io import fits

    from release.compare import fits_problem
    from release.products.headers import check_primary

    report, m = ctx.report, ctx.manifest
    simulated = None
    magic = fits_problem(path)  # astropy would open gzip bytes named .fits without a word
    report.add(rel, "FITS file", f"{path.name} {magic}" if magic else None)
    if magic:
        return "unreadable"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, checksum=True, memmap=False) as hdul:
                _ = [h.data for h in hdul]  # read everything: a truncated file fails here
                bad_sums = [
                    str(w.message)
                    for w in caught
                    if "checksum" in str(w.message).lower() or "datasum" in str(w.message).lower()
                ]
                missing_sums = [h.name for h in hdul if "CHECKSUM" not in h.header or "DATASUM" not in h.header]
                truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
                report.add(rel, "FITS readable", "; ".join(truncated) if truncated else None)
                report.add(
                    rel,
                    "CHECKSUM/DATASUM",
                    "; ".join(bad_sums)
                    if bad_sums
                    else (f"missing on {', '.join(missing_sums)}" if missing_sums else None),
                )
                try:
                    hdul.verify("exception")
                    report.add(rel, "FITS standard (astropy)")
                except Exception as exc:
                    report.add(rel, "FITS standard (astropy)", " ".join(str(exc).split()))
                parsed = parse_name(path.name)
                h0 = hdul[0].header
                if parsed is not None:
                    designated = m is not None and parsed.target in m.targets
                    ctx.primary_ok[rel] = check_primary(report, rel, h0, parsed, designated)
                    sim = h0.get("SIMULATD")
                    simulated = bool(sim) if sim is not None else None
                if m is not None:
                    made_from = report.carried_manifests.get(parsed.version, m) if parsed is not None else m
                    _check_against_manifest(report, rel, h0, parsed, made_from)
                for check in ptype.checks if ptype is not None else ():
                    check(ctx, rel, path, hdul)
    except Exception as exc:
        report.add(rel, "FITS readable", f"cannot be read as FITS ({type(exc).__name__}: {' '.join(str(exc).split())})")
        return "unreadable"
    if not use_fitsverify:
        report.skip(rel, "fitsverify", "fitsverify was turned off (--no-fitsverify)")
    else:
        exe = fitsverify_executable()
        if exe is None:
            report.skip(
                rel,
                "fitsverify",
                "fitsverify is not installed (Debian package 'fitsverify'; `make sysdeps` installs it as root)",
            )
        else:
            proc = subprocess.run([exe, "-q", str(path)], capture_output=True, text=True)
            text = (proc.stdout + proc.stderr).strip()
            m = re.search(r"(\d+) warnings? and (\d+) errors?", text)
            if text.startswith("verification OK"):
                report.add(rel, "fitsverify")
            elif m is None:
                report.add(rel, "fitsverify", f"unexpected fitsverify output: {text[:200]}")
            else:
                w, e = int(m.group(1)), int(m.group(2))  # "verification FAILED: F, N warnings and M errors"
                report.add(
                    rel,
                    "fitsverify",
                    None if (w, e) == (0, 0) else f"fitsverify: {w} warning(s) and {e} error(s): {text[:300]}",
                )
    return simulated


def _check_against_manifest(report: Report, rel: str, h0, parsed, m) -> None:
    """A FITS file says it was made from the release manifest, for its target, as it says."""
    problems = []
    want = m.content_hash()
    if h0.get("HLSPMANI") != want:
        problems.append(
            f"HLSPMANI {str(h0.get('HLSPMANI'))[:16]}... is not the release manifest's content hash {want[:16]}..."
        )
    if h0.get("HLSPID") not in (None, m.release.project.upper()):
        problems.append(f"HLSPID {h0.get('HLSPID')!r} is not the release's {m.release.project.upper()!r}")
    if parsed is not None and parsed.target in m.targets:
        t = m.targets[parsed.target]
        if "HLSPTARG" in h0 and h0["HLSPTARG"] != (t.designation or parsed.target):
            problems.append(
                f"HLSPTARG {h0['HLSPTARG']!r} is not the manifest's designation {(t.designation or parsed.target)!r}"
            )
        for key, value in (("RA_TARG", t.ra), ("DEC_TARG", t.dec)):
            got = h0.get(key)
            if isinstance(got, (int, float)) and abs(got - value) > 1e-6:
                problems.append(f"{key} {got} is not the manifest's {value} for {parsed.target}")
    report.add(rel, "made from the release manifest", "; ".join(problems) if problems else None)
