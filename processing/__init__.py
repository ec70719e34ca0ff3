"""The processing engine: from raw JWST exposures to calibrated mosaics.

Importing this package has no side effects (jwst itself is imported only where a stage runs).
"""
