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


def resize(source: str, target: str, factor: float) -> None:
    """A bilinear Resize module by ``factor`` (the legacy pipeline's x0.25 and x4)."""
    module = add(Resize())
    module.x_name.value = source
    module.y_name.value = target
    module.size_method.value = R_BY_FACTOR
    module.resizing_factor_x.value = factor
    module.resizing_factor_y.value = factor
    module.resizing_factor_z.value = 1.0
    module.interpolation.value = I_BILINEAR
    module.use_manual_or_image.value = C_MANUAL


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

    ci = add(CorrectIlluminationCalculate())
    ci.image_name.value = f"Downsampled{ch}"
    ci.illumination_image_name.value = f"Illum{ch}"
    ci.intensity_choice.value = IC_REGULAR
    ci.dilate_objects.value = False
    ci.rescale_option.value = "Yes"
    ci.each_or_all.value = EA_ALL_ACROSS
    ci.smoothing_method.value = SM_MEDIAN_FILTER
    ci.automatic_object_width.value = FI_MANUALLY
    ci.size_of_smoothing_filter.value = 10
    ci.save_average_image.value = False
    ci.save_dilated_image.value = False

    resize(f"Illum{ch}", f"UpsampledIllum{ch}", 4.0)

for ch in CHANNELS:
    save = add(SaveImages())
    save.save_image_or_figure.value = IF_IMAGE
    save.image_name.value = f"UpsampledIllum{ch}"
    save.file_name_method.value = FN_SINGLE_NAME
    save.single_file_name.value = f"\\g<Plate>_Illum{ch}"
    save.wants_file_name_suffix.value = False
    save.file_format.value = FF_NPY
    save.pathname.dir_choice = DEFAULT_OUTPUT_FOLDER_NAME
    save.overwrite.value = True
    save.when_to_save.value = WS_LAST_CYCLE
    save.update_file_names.value = False
    save.create_subdirectories.value = False

with open(sys.argv[1], "w") as fp:
    pipeline.dump(fp, save_image_plane_details=False)
