"""Write the ``pcpip_*.cppipe`` test pipelines with CellProfiler 4.2.8's own classes.

Run with CellProfiler's interpreter (not importable from the project's venv), from the
repository root:
``.cp-venv/bin/python tests/data/cellprofiler/make_pcpip_fixtures.py tests/data/cellprofiler``.

The Broad's pipelines (pooled-cell-painting-image-processing ``pipelines/12cycles``,
their copies in broadinstitute/starrynight and nf-pooled-cellpainting) are not copied
into this repository. Each fixture reproduces, for one PCPIP step, what those pipelines
expect of their LoadData CSV: the image names their modules read (``OrigDNA``,
``IllumDNA``, bare ``DNA``/``Phalloidin`` in step 3, ``Cycle01_OrigA``,
``Cycle01_IllumA``, ``Cycle01_A``, ``Cycle01_DAPI``, ``CorrDNA``), LoadData's grouping
tags (``Plate``; ``Plate,Well``; ``Plate,SBSCycle``; ``Plate,Site,Well``) and their
SaveImages file names (``\\g<Plate>_Illum<Name>``,
``Plate_\\g<Plate>_Well_\\g<Well_Value>_Site_\\g<Site>_Corr<Name>``,
``\\g<Plate>_Cycle\\g<SBSCycle>_Illum<Base>``, ``..._Cycle<kk>_<Base>``), with small
stock modules so stock CellProfiler runs them on the test sample in seconds. Steps 7 and
9 also get the plugin modules of the real pipelines (CompensateColors, CallBarcodes):
``pcpip_7_plugin.cppipe`` names CompensateColors, which is not installed (the missing
plugin error); ``pcpip_9_analysis.cppipe`` uses the CallBarcodes test double of
``plugins/`` and reads ``Barcodes.csv`` from the Default Input Folder, as PCPIP 9 does.
"""
# ruff: noqa: E402 - CellProfiler must be set headless before its modules are imported.

import os
import sys

from cellprofiler_core.preferences import set_headless, set_plugin_directory

set_headless()
HERE = os.path.dirname(os.path.abspath(__file__))
set_plugin_directory(os.path.join(HERE, "plugins"), globally=False)

import cellprofiler_core.utilities.core.modules as modules
from cellprofiler.modules.correctilluminationapply import CorrectIlluminationApply
from cellprofiler.modules.correctilluminationcalculate import (
    EA_ALL_ACROSS,
    FI_MANUALLY,
    IC_REGULAR,
    SM_MEDIAN_FILTER,
    CorrectIlluminationCalculate,
)
from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
from cellprofiler.modules.saveimages import (
    BIT_DEPTH_16,
    FF_NPY,
    FF_TIFF,
    FN_SINGLE_NAME,
    IF_IMAGE,
    WS_EVERY_CYCLE,
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

modules.fill_modules()

CP = ("DNA", "Phalloidin")  # the CP images every PCPIP step reads
BASES = ("A", "C", "G", "T")
SBS = ("DNA", *BASES)
CYCLES = (1, 2)  # the test sample's SBS cycles


class Builder:
    def __init__(self, group_by: str) -> None:
        self.pipeline = Pipeline()
        ld = self.add(LoadData())
        ld.csv_directory.dir_choice = ABSOLUTE_FOLDER_NAME
        ld.wants_images.value = True
        ld.image_directory.dir_choice = NO_FOLDER_NAME  # PathName_ columns are absolute
        ld.rescale.value = True
        ld.wants_image_groupings.value = True
        ld.metadata_fields.value = group_by
        ld.wants_rows.value = False

    def add(self, module):
        module.set_module_num(len(self.pipeline.modules()) + 1)
        self.pipeline.add_module(module)
        return module

    def module(self, cls, **values):
        instance = self.add(cls())
        for name, value in values.items():
            getattr(instance, name).value = value
        return instance

    def illum_calc(self, source: str, target: str) -> None:
        self.module(CorrectIlluminationCalculate, image_name=source,
                    illumination_image_name=target, intensity_choice=IC_REGULAR,
                    dilate_objects=False, rescale_option="Yes", each_or_all=EA_ALL_ACROSS,
                    smoothing_method=SM_MEDIAN_FILTER, automatic_object_width=FI_MANUALLY,
                    size_of_smoothing_filter=3, save_average_image=False,
                    save_dilated_image=False)  # fmt: skip

    def illum_apply(self, pairs) -> None:
        m = self.add(CorrectIlluminationApply())
        for i, (source, illum, target) in enumerate(pairs):
            if i:
                m.add_image()
            group = m.images[i]
            group.image_name.value = source
            group.illum_correct_function_image_name.value = illum
            group.corrected_image_name.value = target
            group.divide_or_subtract.value = "Divide"

    def save(self, image: str, name: str, npy: bool = False) -> None:
        save = self.module(
            SaveImages, save_image_or_figure=IF_IMAGE, image_name=image,
            file_name_method=FN_SINGLE_NAME, single_file_name=name,
            wants_file_name_suffix=False, file_format=FF_NPY if npy else FF_TIFF,
            overwrite=True, when_to_save=WS_LAST_CYCLE if npy else WS_EVERY_CYCLE,
            update_file_names=False, create_subdirectories=False,
        )  # fmt: skip
        if not npy:
            save.bit_depth.value = BIT_DEPTH_16
        save.pathname.dir_choice = DEFAULT_OUTPUT_FOLDER_NAME

    def measure(self, images) -> None:
        self.module(MeasureImageIntensity, images_list=", ".join(images))

    def export(self) -> None:
        export = self.module(ExportToSpreadsheet, wants_overwrite_without_warning=True)
        export.directory.dir_choice = DEFAULT_OUTPUT_FOLDER_NAME

    def write(self, path: str, extra: str = "") -> None:
        with open(path, "w") as fp:
            self.pipeline.dump(fp, save_image_plane_details=False)
        if extra:  # a module block CellProfiler cannot build here, counted in the header
            with open(path) as fp:
                text = fp.read()
            n = len(self.pipeline.modules())
            with open(path, "w") as fp:
                fp.write(text.replace(f"ModuleCount:{n}\n", f"ModuleCount:{n + 1}\n") + extra)


def cyc(k: int) -> str:
    return f"Cycle{k:02d}_"


def main(out: str) -> None:
    site = "Plate_\\g<Plate>_Well_\\g<Well_Value>_Site_\\g<Site>"

    b = Builder("Plate")  # 1_CP_Illum
    for n in CP:
        b.illum_calc(f"Orig{n}", f"Illum{n}")
        b.save(f"Illum{n}", f"\\g<Plate>_Illum{n}", npy=True)
    b.write(os.path.join(out, "pcpip_1_illum_cp.cppipe"))

    b = Builder("Plate,Well")  # 2_CP_Apply_Illum
    b.illum_apply([(f"Orig{n}", f"Illum{n}", f"Corr{n}") for n in CP])
    for n in CP:
        b.save(f"Corr{n}", f"{site}_Corr{n}")
    b.write(os.path.join(out, "pcpip_2_apply_cp.cppipe"))

    b = Builder("Plate,Well")  # 3_CP_SegmentationCheck reads the corrected images bare
    b.measure(CP)
    b.export()
    b.write(os.path.join(out, "pcpip_3_segcheck.cppipe"))

    b = Builder("Plate,SBSCycle")  # 5_BC_Illum
    for n in SBS:
        b.illum_calc(f"Orig{n}", f"Illum{n}")
        b.save(f"Illum{n}", f"\\g<Plate>_Cycle\\g<SBSCycle>_Illum{n}", npy=True)
    b.write(os.path.join(out, "pcpip_5_illum_sbs.cppipe"))

    b = Builder("Plate,Site,Well")  # 6_BC_Apply_Illum
    pairs = [
        (f"{cyc(k)}Orig{n}", f"{cyc(k)}Illum{n}", f"{cyc(k)}Corr{n}") for k in CYCLES for n in SBS
    ]
    b.illum_apply(pairs)
    for k in CYCLES:
        for n in BASES:
            b.save(f"{cyc(k)}Corr{n}", f"{site}_{cyc(k)}{n}")
    b.save(f"{cyc(1)}CorrDNA", f"{site}_Cycle01_DAPI")
    b.write(os.path.join(out, "pcpip_6_apply_sbs.cppipe"))

    aligned = [f"{cyc(k)}{n}" for k in CYCLES for n in BASES] + ["Cycle01_DAPI"]
    b = Builder("Plate,Site,Well")  # 7_BC_Preprocess, stock modules only
    b.measure(aligned)
    b.export()
    b.write(os.path.join(out, "pcpip_7_preprocess.cppipe"))
    n = len(b.pipeline.modules()) + 1
    # The real 7 compensates colours with the CellProfiler-plugins module (not installed).
    b.write(os.path.join(out, "pcpip_7_plugin.cppipe"), extra=(
        f"\nCompensateColors:[module_num:{n}|svn_version:'Unknown'|variable_revision_number:1|"
        "show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|"
        "wants_pause:False]\n    Hidden:8\n    Hidden:1\n"
        "    Select an image to measure:Cycle01_A\n"
    ))  # fmt: skip

    b = Builder("Plate,Site,Well")  # 9_Analysis: corrected CP + aligned SBS + barcodes
    b.measure([f"Corr{n}" for n in CP] + aligned)
    call = b.add(modules.instantiate_module("CallBarcodes"))
    call.csv_file_name.value = "Barcodes.csv"
    b.export()
    b.write(os.path.join(out, "pcpip_9_analysis.cppipe"))


if __name__ == "__main__":
    main(sys.argv[1])
