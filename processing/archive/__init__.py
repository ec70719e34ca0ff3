"""The archive path: a manifest's raw exposures from MAST (:mod:`processing.archive.mast`),
downloaded resumably and verified (:mod:`processing.archive.download`) into the layout
``hlsp run`` reads, with a fetch record of every file (``hlsp fetch``, docs/user-guide.md)."""
