"""Astrometry: relative (one shift per visit, before level 3) and absolute (against an external
reference catalogue, after level 3, back-propagated to the exposures as tweakback files).

- ``match``: detection, catalogue cuts, matching and fitting on arrays (pure);
- ``wcs``: applying a solution to cal files (tweakwcs) and mosaics (exact affine);
- ``catalog``: the manifest's reference catalogue and the sources of an image;
- ``relative``, ``absolute``: the two stages (declarations ``STAGE``);
- ``parameters``: their parameters.

docs/astrometry.md describes the method and what it achieves on the synthetic truth.
"""
