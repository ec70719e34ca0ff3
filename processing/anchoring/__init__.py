"""Background anchoring (the paper's section 3.9): the absolute background level of every
mosaic, from wide-field images with galaxy-free sky (external: the instrument's reference band)
and from the anchored reference band (internal: the other bands).

- ``fit``: resolution matching, the wide-field image's zero, the binned linear fit (pure);
- ``stage``: reading and writing files, and the stage declaration ``STAGE``;
- ``parameters``: its parameters.

docs/anchoring.md describes the method and what it achieves on the synthetic truth.
"""
