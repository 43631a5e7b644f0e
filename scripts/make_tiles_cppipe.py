"""Write tests/data/cellprofiler/tiles_nuclei.cppipe with CellProfiler 4.2.8's own classes.

Run with CellProfiler's interpreter (it is not importable from the project's venv):
``.cp-venv/bin/python scripts/make_tiles_cppipe.py tests/data/cellprofiler/tiles_nuclei.cppipe``.
A stand-in for the analysis pipeline that needs only stock modules: LoadData (the
analysis CSV over tiles) -> IdentifyPrimaryObjects on ``CorrDNA`` (``Nuclei``) and on
``Cycle01_DAPI`` (``SBSNuclei``), global Otsu, diameters 8-40 px -> ExportToSpreadsheet.
Both arms' nuclei of a tile, found by CellProfiler itself, show whether the SBS tile is
registered to the CP tile.
"""
# ruff: noqa: E402 - CellProfiler must be set headless before its modules are imported.

import sys

from cellprofiler_core.preferences import set_headless

set_headless()
from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects
from cellprofiler_core.modules.loaddata import LoadData
from cellprofiler_core.pipeline import Pipeline
from cellprofiler_core.preferences import ABSOLUTE_FOLDER_NAME, NO_FOLDER_NAME

pipeline = Pipeline()


def add(module, n: int):
    module.set_module_num(n)
    pipeline.add_module(module)
    return module


ld = add(LoadData(), 1)
ld.csv_directory.dir_choice = ABSOLUTE_FOLDER_NAME
ld.wants_images.value = True
ld.image_directory.dir_choice = NO_FOLDER_NAME  # PathName_ columns are absolute
ld.rescale.value = True
ld.wants_image_groupings.value = False
ld.wants_rows.value = False

for n, (image, objects) in enumerate((("CorrDNA", "Nuclei"), ("Cycle01_DAPI", "SBSNuclei")), 2):
    m = add(IdentifyPrimaryObjects(), n)
    m.x_name.value = image
    m.y_name.value = objects
    m.size_range.value = (8, 40)
    m.exclude_size.value = True
    m.exclude_border_objects.value = True
    m.use_advanced.value = True
    m.threshold.threshold_scope.value = "Global"
    m.threshold.global_operation.value = "Otsu"
    m.threshold.two_class_otsu.value = "Two classes"
    m.threshold.threshold_smoothing_scale.value = 1.0

export = add(ExportToSpreadsheet(), 4)
export.wants_prefix.value = True
export.prefix.value = "MyExpt_"

with open(sys.argv[1], "w") as fp:
    pipeline.dump(fp, save_image_plane_details=False)
