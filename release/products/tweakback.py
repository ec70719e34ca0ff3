"""``tweakback``: per target and band, every exposure of the mosaic (the processed cal files)
with the absolute astrometry back-propagated into its WCS, in one folder of a gzipped tar
archive, as the astrometry stage wrote it; when ``products.tweakback`` asks.

The release file is the cache's very file where both are on one file system (a hard link,
as a patch carries its parent's files: the archive is byte-identical, read-only and was just
proved against its cache record by the product index), else a copy: the demo's releases then
store no second copy of their 0.3 GB of tweakback archives."""

from __future__ import annotations

from pathlib import Path

from release.products import ProductType


def write(ctx, unit) -> None:
    from processing.fileio import link_or_copy

    (entry,) = ctx.entries_for(unit)
    dest = ctx.dest(unit)
    dest.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(entry.path, dest)


def check(ctx, rel: str, path: Path, hdul=None) -> None:
    """A tweakback tarball opens; its members are regular files in one folder (no absolute
    path, no '..', no link: nothing can land outside the folder it is unpacked in); each is a
    readable FITS exposure with a celestial WCS and the astrometry record (HLSPDAST).

    Read as a stream, one member at a time (each is decompressed once: opening members of a
    seekable gzip archive in turn decompresses it again from the start for every seek back)."""
    import io
    import tarfile

    from astropy.io import fits
    from astropy.wcs import WCS

    report = ctx.report
    try:
        tar = tarfile.open(path, mode="r|gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.add(rel, "tweakback tarball", f"does not open as a gzipped tar archive ({type(exc).__name__}: {exc})")
        return
    problems: list[str] = []
    folders: set[str] = set()
    n = 0
    with tar:
        try:
            for member in tar:
                name = member.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or len(parts) != 2:
                    problems.append(
                        f"member {name!r} is not a file in the archive's one folder (absolute path, '..' or nesting)"
                    )
                    continue
                if not member.isfile():
                    problems.append(f"member {name!r} is not a regular file (link or special file)")
                    continue
                folders.add(parts[0])
                n += 1
                try:
                    with fits.open(io.BytesIO(tar.extractfile(member).read()), memmap=False) as members:
                        h0 = members[0].header
                        if "HLSPDAST" not in h0:
                            problems.append(f"{name}: no HLSPDAST (astrometry record)")
                        if "SCI" not in members or not WCS(members["SCI"].header).has_celestial:
                            problems.append(f"{name}: no SCI extension with a celestial WCS")
                except Exception as exc:  # noqa: BLE001 - any reader error is the member's problem
                    problems.append(
                        f"{name}: not a readable FITS file ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
                    )
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"the archive is damaged ({type(exc).__name__}: {exc})")
    if n == 0 and not problems:
        problems.append("holds no exposure")
    if len(folders) > 1:
        problems.append(f"members are spread over {len(folders)} folders ({', '.join(sorted(folders)[:3])})")
    report.add(
        rel,
        "tweakback tarball",
        "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "") if problems else None,
    )


README = """\
*_tweakback.tar.gz: per target and band, every exposure of the mosaic (jwst level-2 cal
  files as processed here: destriped, level-matched, relative astrometry applied) with the
  absolute astrometric solution of the mosaic back-propagated into its WCS (gwcs and the
  FITS SIP approximation), for PSF photometry of the exposures (e.g. DOLPHOT). All members
  sit in one folder. Keywords: HLSPDAST (absolute, or relative only and why in the mosaic's
  astrometry table), HLSPDAE/HLSPDAN (shift east/north, mas), HLSPDART (rotation, deg),
  HLSPDAM (matched stars), HLSPDARM (RMS, mas), HLSPDAB (band solved on), HLSPDRE/HLSPDRN
  (relative shift of the exposure's visit, arcsec).
"""

TWEAKBACK = ProductType(
    "tweakback",
    "tar.gz",
    "band",
    write,
    checks=(check,),
    readme=README,
    source="tweakback",
    wanted=lambda m: m.products.tweakback,
)
