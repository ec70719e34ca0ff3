"""From calibrated mosaics to a MAST High-Level Science Product release.

Importing this package has no side effects: no logging handlers, no environment changes.
"""
