"""CellProfiler interop: LoadData CSVs from the index and workspace, and running a lab's
own ``.cppipe`` over them as a pipecraft scatter (``starrynight cp loaddata`` / ``cp run``).

- :mod:`starrynight.cellprofiler.loaddata`: which images each step loads, named as
  PCPIP's own CSV writers name them for that step (``OrigDNA``, ``IllumDNA``, bare
  ``DNA`` in the segmentation check, ``CorrDNA``, ``Cycle01_A`` ...);
- :mod:`starrynight.cellprofiler.cppipe`: checks that a file is a pipeline CellProfiler
  can load, with every module installed (stock 4.2.8 or the plugins folder);
- :mod:`starrynight.cellprofiler.run`: one pipecraft ``Command`` per CSV, with the
  step's Default Input Folder and CellProfiler's own error when a unit fails.
"""
