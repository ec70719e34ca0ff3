"""PSF matching (the paper's section 3.10): every mosaic convolved to the release's common
Gaussian resolutions.

- ``kernels``: kernels from each band's PSF to Gaussians by the method of Aniano et al. (2011),
  their W- and D metrics and the very safe / safe / aggressive limits (pure);
- ``convolve``: normalised convolution of SCI and ERR, tile by tile (pure);
- ``stage``: reading and writing files, and the stage declaration ``STAGE``;
- ``parameters``: its parameters.

docs/psf-matching.md describes the method and what it achieves on the synthetic truth.
"""
