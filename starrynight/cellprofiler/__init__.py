"""CellProfiler interop: LoadData CSVs from the index and workspace, and running a lab's
own ``.cppipe`` over them as a pipecraft scatter (``starrynight cp loaddata`` / ``cp run``).

- :mod:`starrynight.cellprofiler.loaddata`: which images each step loads, named in the
  PCPIP conventions (``OrigDNA``, ``IllumDNA``, ``CorrDNA``, ``Cycle01_A`` ...);
- :mod:`starrynight.cellprofiler.cppipe`: checks that a file is a CellProfiler pipeline;
- :mod:`starrynight.cellprofiler.run`: one pipecraft ``Command`` per CSV.
"""
