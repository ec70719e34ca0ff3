"""The true sky of a synthetic target: an extended, structured galaxy plus point sources and
background galaxies, with per-band surface brightness in MJy/sr.

The sky is analytic, so it can be evaluated at any (RA, Dec): at the pixel centres of every
exposure (the simulator) and of every mosaic (the truth the tests compare against), with no
resampling error of its own. Compact components are Gaussians already convolved with the band's
PSF (a Gaussian of the paper's Table 2 FWHM), so the sky returned is the sky as the telescope
sees it; extended components are much larger than any PSF and are left unconvolved.

Components and their spectra (relative surface brightness per band):

- stellar disk + bulge + nucleus: bright at 2 um, falling to the mid-infrared;
- dust / PAH: spiral arms and star-forming knots, bright at 7.7 and 11.3 um (PAH) and 21 um
  (hot dust), faint at 2 um;
- point sources (stars and clusters) with their own colours; the nucleus is bright enough to
  saturate the detector in some bands;
- background galaxies: small, faint ellipses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from processing.simulate.detectors import FILTERS

_ARCSEC = 1.0 / 3600.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

#: Relative spectra (per band) of the two extended components.
STELLAR_SED = {
    "F200W": 1.0,
    "F300M": 0.55,
    "F335M": 0.45,
    "F360M": 0.40,
    "F770W": 0.12,
    "F1000W": 0.07,
    "F1130W": 0.06,
    "F2100W": 0.03,
}
DUST_SED = {
    "F200W": 0.02,
    "F300M": 0.05,
    "F335M": 0.25,
    "F360M": 0.08,
    "F770W": 1.0,
    "F1000W": 0.35,
    "F1130W": 0.8,
    "F2100W": 0.9,
}
#: Red supergiants and AGB stars (cool photospheres with circumstellar dust): bright from 2 um
#: into the mid-infrared, the point sources PHANGS aligns to (paper section 3.8).
RSG_SED = {
    "F200W": 1.0,
    "F300M": 0.75,
    "F335M": 0.7,
    "F360M": 0.65,
    "F770W": 0.45,
    "F1000W": 0.4,
    "F1130W": 0.35,
    "F2100W": 0.2,
}
#: ``Galaxy.star_colour`` codes: which spectrum a point source has.
STELLAR, DUSTY_CLUSTER, RED_SUPERGIANT = 0, 1, 2


def point_source_sed(colour: np.ndarray, band: str) -> np.ndarray:
    """Relative brightness in ``band`` of point sources of colour code ``colour`` (STELLAR,
    DUSTY_CLUSTER or RED_SUPERGIANT); shape of ``colour``, dimensionless (1 = F200W of a star)."""
    colour = np.asarray(colour)
    return np.select(
        [colour == DUSTY_CLUSTER, colour == RED_SUPERGIANT], [DUST_SED[band], RSG_SED[band]], STELLAR_SED[band]
    )


def tangent_offsets(ra, dec, ra0: float, dec0: float):
    """Gnomonic (TAN) offsets in arcsec of (ra, dec) from (ra0, dec0); +x to the east."""
    ra, dec = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.rad2deg(xi) * 3600.0, np.rad2deg(eta) * 3600.0


@dataclass
class Galaxy:
    """Parameters of one synthetic galaxy (angles in degrees, sizes in arcsec, MJy/sr at F200W/F770W)."""

    ra: float
    dec: float
    pa: float = 30.0  # position angle of the major axis, east of north
    inclination: float = 35.0
    disk_scale: float = 35.0  # exponential scale length
    disk_peak: float = 25.0  # stellar disk central surface brightness at F200W
    bulge_sigma: float = 4.0
    bulge_peak: float = 60.0
    nucleus_peak: float = 2500.0  # PSF-convolved peak at F200W (saturates)
    arm_peak: float = 30.0  # dust arm surface brightness at F770W
    arm_pitch: float = 18.0  # spiral pitch angle
    arm_width: float = 0.35  # radians of azimuth
    n_arms: int = 2
    knots: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x, y, sigma, peak(F770W)
    stars: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # x, y, flux_F200W (MJy/sr * arcsec^2)
    star_colour: np.ndarray = field(default_factory=lambda: np.zeros(0))  # STELLAR, DUSTY_CLUSTER or RED_SUPERGIANT
    bg_galaxies: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # x, y, sigma, axis ratio, peak

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        ra: float,
        dec: float,
        rng: np.random.Generator,
        extent: float = 120.0,
        n_knots: int = 60,
        n_stars: int = 150,
        n_bg: int = 25,
        n_rsg: int = 800,
        **kwargs,
    ) -> Galaxy:
        """A random galaxy; ``n_rsg`` red supergiants / AGB stars follow the exponential disk
        (surface density ~ exp(-r / disk_scale) in the disk plane, as the HST catalogues PHANGS
        aligns to: hundreds per galaxy, ~0.1 per arcsec^2 in the inner disk)."""
        g = cls(ra=ra, dec=dec, pa=float(rng.uniform(0, 180)), inclination=float(rng.uniform(20, 50)), **kwargs)
        # knots along the arms
        r = rng.uniform(5.0, extent * 0.8, n_knots)
        arm = rng.integers(0, g.n_arms, n_knots)
        theta = g._arm_phase(r) + 2 * np.pi * arm / g.n_arms + rng.normal(0, 0.12, n_knots)
        kx, ky = g._disk_to_sky(r * np.cos(theta), r * np.sin(theta))
        g.knots = np.column_stack([kx, ky, rng.uniform(0.15, 0.8, n_knots), rng.lognormal(np.log(15.0), 0.7, n_knots)])
        sx, sy = rng.uniform(-extent, extent, (2, n_stars))
        g.stars = np.column_stack([sx, sy, rng.lognormal(np.log(3.0), 1.0, n_stars)])
        g.star_colour = (rng.random(n_stars) < 0.3).astype(float)
        bx, by = rng.uniform(-1.5 * extent, 1.5 * extent, (2, n_bg))
        g.bg_galaxies = np.column_stack(
            [bx, by, rng.uniform(0.3, 1.2, n_bg), rng.uniform(0.3, 1.0, n_bg), rng.uniform(0.2, 2.0, n_bg)]
        )
        # red supergiants / AGB stars: radius ~ Gamma(2, h) gives a surface density ~ exp(-r/h)
        rr = rng.gamma(2.0, g.disk_scale, n_rsg)
        phi = rng.uniform(0.0, 2 * np.pi, n_rsg)
        rx, ry = g._disk_to_sky(rr * np.cos(phi), rr * np.sin(phi))
        keep = (np.abs(rx) < extent) & (np.abs(ry) < extent) & (np.hypot(rx, ry) > 1.5)  # not on the nucleus
        rflux = rng.lognormal(np.log(2.0), 0.6, n_rsg)[keep]
        g.stars = np.vstack([g.stars, np.column_stack([rx[keep], ry[keep], rflux])])
        g.star_colour = np.concatenate([g.star_colour, np.full(rflux.size, float(RED_SUPERGIANT))])
        return g

    # -- geometry ----------------------------------------------------------------------------
    def _arm_phase(self, r):
        return np.log(np.maximum(r, 1e-3) / 5.0) / np.tan(np.deg2rad(self.arm_pitch))

    def _disk_to_sky(self, xd, yd):
        """Disk-plane (major axis along xd) to sky offsets (east, north) in arcsec."""
        cosi = np.cos(np.deg2rad(self.inclination))
        pa = np.deg2rad(self.pa)
        # major axis at PA east of north: unit vector (sin pa, cos pa)
        east = xd * np.sin(pa) - yd * cosi * np.cos(pa)
        north = xd * np.cos(pa) + yd * cosi * np.sin(pa)
        return east, north

    def _sky_to_disk(self, east, north):
        cosi = np.cos(np.deg2rad(self.inclination))
        pa = np.deg2rad(self.pa)
        xd = east * np.sin(pa) + north * np.cos(pa)
        yd = (-east * np.cos(pa) + north * np.sin(pa)) / cosi
        return xd, yd

    # -- evaluation --------------------------------------------------------------------------
    def surface_brightness(self, band: str, ra, dec) -> np.ndarray:
        """True surface brightness in MJy/sr at (ra, dec) in degrees, as seen through ``band``'s PSF."""
        x, y = tangent_offsets(ra, dec, self.ra, self.dec)
        return self.surface_brightness_xy(band, x, y)

    def surface_brightness_xy(self, band: str, x, y) -> np.ndarray:
        psf_sigma = FILTERS[band]["fwhm"] * _FWHM_TO_SIGMA
        s_star, s_dust = STELLAR_SED[band], DUST_SED[band]
        xd, yd = self._sky_to_disk(x, y)
        r = np.hypot(xd, yd)
        out = s_star * self.disk_peak * np.exp(-r / self.disk_scale)
        bulge_var = self.bulge_sigma**2 + psf_sigma**2
        out += s_star * self.bulge_peak * self.bulge_sigma**2 / bulge_var * np.exp(-0.5 * (x**2 + y**2) / bulge_var)
        # nucleus: a point source of fixed flux, so its peak scales with the PSF area
        nuc_flux = self.nucleus_peak * 2 * np.pi * FILTERS["F200W"]["fwhm"] ** 2 * _FWHM_TO_SIGMA**2
        out += (s_star + 0.5 * s_dust) * _gauss(x, y, 0.0, 0.0, psf_sigma, nuc_flux)
        # spiral arms (dust), fading with radius and absent in the very centre
        phase = np.arctan2(yd, xd) - self._arm_phase(r)
        arms = np.zeros_like(r)
        for k in range(self.n_arms):
            d = np.angle(np.exp(1j * (phase - 2 * np.pi * k / self.n_arms)))
            arms += np.exp(-0.5 * (d / self.arm_width) ** 2)
        envelope = np.exp(-r / (1.5 * self.disk_scale)) * (1 - np.exp(-((r / 8.0) ** 2)))
        out += s_dust * self.arm_peak * arms * envelope
        out += s_dust * 0.15 * self.arm_peak * np.exp(-r / (2.0 * self.disk_scale))  # diffuse dust
        comps = []  # (x0, y0, sigma_x^2, sigma_y^2, peak) of PSF-convolved Gaussians
        for kx, ky, ks, kp in self.knots:
            var = ks**2 + psf_sigma**2
            comps.append((kx, ky, var, var, s_dust * kp * ks**2 / var))
        colour = point_source_sed(self.star_colour, band)
        for (sx, sy, flux), c in zip(self.stars, colour):
            comps.append((sx, sy, psf_sigma**2, psf_sigma**2, c * flux / (2 * np.pi * psf_sigma**2)))
        comps += _bg_components(self.bg_galaxies, 0.3 * (s_star + s_dust), psf_sigma)
        add_gaussians(out, x, y, comps)
        return out


def _bg_components(bg: np.ndarray, scale: float, psf_sigma: float) -> list:
    comps = []
    for bx, by, bs, q, bp in bg:
        var_x, var_y = bs**2 + psf_sigma**2, (q * bs) ** 2 + psf_sigma**2
        comps.append((bx, by, var_x, var_y, scale * bp * bs**2 * q / np.sqrt(var_x * var_y)))
    return comps


def add_gaussians(out: np.ndarray, x: np.ndarray, y: np.ndarray, comps: list, nsigma: float = 7.0) -> None:
    """Add axis-aligned Gaussians ``(x0, y0, var_x, var_y, peak)`` to ``out`` in place.

    On a 2-D grid (an image's pixel centres, mapped nearly linearly to x, y) each Gaussian is
    evaluated only in a stamp around it; otherwise on every point.
    """
    if out.ndim == 2 and min(out.shape) >= 3:
        ny, nx = out.shape
        # local affine model of the grid: (x, y) = p0 + J @ (i, j)
        p0 = np.array([x[0, 0], y[0, 0]])
        jac = np.array([[x[0, 1] - x[0, 0], x[1, 0] - x[0, 0]], [y[0, 1] - y[0, 0], y[1, 0] - y[0, 0]]])
        inv = np.linalg.inv(jac)
        step = float(np.sqrt(abs(np.linalg.det(jac))))
        for x0, y0, vx, vy, peak in comps:
            i, j = inv @ (np.array([x0, y0]) - p0)
            r = int(np.ceil(nsigma * np.sqrt(max(vx, vy)) / step)) + 3
            i0, i1 = max(int(i) - r, 0), min(int(i) + r + 1, nx)
            j0, j1 = max(int(j) - r, 0), min(int(j) + r + 1, ny)
            if i0 >= i1 or j0 >= j1:
                continue
            xs, ys = x[j0:j1, i0:i1], y[j0:j1, i0:i1]
            out[j0:j1, i0:i1] += peak * np.exp(-0.5 * ((xs - x0) ** 2 / vx + (ys - y0) ** 2 / vy))
        return
    for x0, y0, vx, vy, peak in comps:
        out += peak * np.exp(-0.5 * np.minimum((x - x0) ** 2 / vx + (y - y0) ** 2 / vy, 80.0))


def _gauss(x, y, x0, y0, sigma, flux):
    """A 2-D Gaussian with total ``flux`` (MJy/sr * arcsec^2), evaluated in MJy/sr."""
    r2 = (x - x0) ** 2 + (y - y0) ** 2
    # only evaluate near the source: cheap for many sources on big grids
    return flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * np.minimum(r2 / sigma**2, 60.0))


@dataclass
class Field:
    """An empty patch of sky (MIRI off-field positions): only background galaxies and stars."""

    ra: float
    dec: float
    bg_galaxies: np.ndarray
    stars: np.ndarray

    @classmethod
    def random(
        cls, ra: float, dec: float, rng: np.random.Generator, extent: float = 150.0, n_bg: int = 15, n_stars: int = 10
    ):
        bx, by = rng.uniform(-extent, extent, (2, n_bg))
        sx, sy = rng.uniform(-extent, extent, (2, n_stars))
        return cls(
            ra=ra,
            dec=dec,
            bg_galaxies=np.column_stack(
                [bx, by, rng.uniform(0.3, 1.5, n_bg), rng.uniform(0.3, 1.0, n_bg), rng.uniform(0.2, 2.0, n_bg)]
            ),
            stars=np.column_stack([sx, sy, rng.lognormal(np.log(2.0), 1.0, n_stars)]),
        )

    def surface_brightness(self, band: str, ra, dec) -> np.ndarray:
        x, y = tangent_offsets(ra, dec, self.ra, self.dec)
        psf_sigma = FILTERS[band]["fwhm"] * _FWHM_TO_SIGMA
        out = np.zeros_like(np.asarray(x, float))
        comps = [
            (sx, sy, psf_sigma**2, psf_sigma**2, STELLAR_SED[band] * flux / (2 * np.pi * psf_sigma**2))
            for sx, sy, flux in self.stars
        ]
        comps += _bg_components(self.bg_galaxies, 0.3 * (STELLAR_SED[band] + DUST_SED[band]), psf_sigma)
        add_gaussians(out, x, y, comps)
        return out
