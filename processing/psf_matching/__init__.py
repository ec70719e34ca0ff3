"""PSF matching (the paper's section 3.10): kernels from each band's PSF to Gaussians by the
method of Aniano et al. (2011) (``kernels``, pure). The stage that convolves the mosaics to the
release resolutions is not in this version yet (processing/registry.py lists it as planned).
"""
