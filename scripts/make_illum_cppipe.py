"""Write tests/data/cellprofiler/illum_calc.cppipe with CellProfiler 4.2.8's own classes.

Run with CellProfiler's interpreter (it is not importable from the project's venv):
``.cp-venv/bin/python scripts/make_illum_cppipe.py tests/data/cellprofiler/illum_calc.cppipe``.
The settings are those of the legacy Broad ``1_CP_Illum`` pipeline: per channel Resize
x0.25 (bilinear) -> CorrectIlluminationCalculate (Regular, all images across cycles,
median filter of size 10, robust-minimum rescale) -> Resize x4, then SaveImages as .npy.
"""
# ruff: noqa: E402 - CellProfiler must be set headless before its modules are imported.

import sys

from cellprofiler_core.preferences import set_headless

set_headless()
from cellprofiler.modules.correctilluminationcalculate import (
    EA_ALL_ACROSS,
    FI_MANUALLY,
    IC_REGULAR,
    SM_MEDIAN_FILTER,
    CorrectIlluminationCalculate,
)
from cellprofiler.modules.resize import C_MANUAL, I_BILINEAR, R_BY_FACTOR, Resize
from cellprofiler.modules.saveimages import (
    FF_NPY,
    FN_SINGLE_NAME,
    IF_IMAGE,
    WS_LAST_CYCLE,
    SaveImages,
)
from cellprofiler_core.modules.loaddata import LoadData
from cellprofiler_core.pipeline import Pipeline
from cellprofiler_core.preferences import (
    ABSOLUTE_FOLDER_NAME,
    DEFAULT_OUTPUT_FOLDER_NAME,
    NO_FOLDER_NAME,
)

CHANNELS = ("DNA", "Phalloidin", "ZO1AF488")

pipeline = Pipeline()
n = 0


def add(module):
    global n
    n += 1
    module.set_module_num(n)
    pipeline.add_module(module)
    return module


def module(cls, **values):
    """A module of ``cls`` with its settings set by name, appended to the pipeline."""
    instance = add(cls())
    for name, value in values.items():
        getattr(instance, name).value = value
    return instance


def resize(source: str, target: str, factor: float) -> None:
    """A bilinear Resize module by ``factor`` (the legacy pipeline's x0.25 and x4)."""
    module(Resize, x_name=source, y_name=target, size_method=R_BY_FACTOR,
           resizing_factor_x=factor, resizing_factor_y=factor, resizing_factor_z=1.0,
           interpolation=I_BILINEAR, use_manual_or_image=C_MANUAL)  # fmt: skip


ld = LoadData()

add(ld)
ld.csv_directory.dir_choice = ABSOLUTE_FOLDER_NAME
ld.wants_images.value = True
ld.image_directory.dir_choice = NO_FOLDER_NAME  # PathName_ columns are absolute
ld.rescale.value = True  # as the legacy 1_CP_Illum pipeline
ld.wants_image_groupings.value = True
ld.metadata_fields.value = "Plate"
ld.wants_rows.value = False

for ch in CHANNELS:
    resize(f"Orig{ch}", f"Downsampled{ch}", 0.25)
    module(CorrectIlluminationCalculate, image_name=f"Downsampled{ch}",
           illumination_image_name=f"Illum{ch}", intensity_choice=IC_REGULAR,
           dilate_objects=False, rescale_option="Yes", each_or_all=EA_ALL_ACROSS,
           smoothing_method=SM_MEDIAN_FILTER, automatic_object_width=FI_MANUALLY,
           size_of_smoothing_filter=10, save_average_image=False,
           save_dilated_image=False)  # fmt: skip
    resize(f"Illum{ch}", f"UpsampledIllum{ch}", 4.0)

for ch in CHANNELS:
    save = module(SaveImages, save_image_or_figure=IF_IMAGE, image_name=f"UpsampledIllum{ch}",
                  file_name_method=FN_SINGLE_NAME, single_file_name=f"\\g<Plate>_Illum{ch}",
                  wants_file_name_suffix=False, file_format=FF_NPY, overwrite=True,
                  when_to_save=WS_LAST_CYCLE, update_file_names=False,
                  create_subdirectories=False)  # fmt: skip
    save.pathname.dir_choice = DEFAULT_OUTPUT_FOLDER_NAME

with open(sys.argv[1], "w") as fp:
    pipeline.dump(fp, save_image_plane_details=False)
