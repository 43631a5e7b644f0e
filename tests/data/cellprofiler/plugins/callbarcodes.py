"""Test double of the CellProfiler-plugins ``CallBarcodes`` module (not the real one).

It has the two settings of the real module that ``cp run`` depends on, spelled the same
(``Input data file location`` = Default Input Folder, ``Name of the file`` =
``Barcodes.csv``), reads that CSV the way the real module does, and records how many
barcodes it read as the image measurement ``Barcodes_Count``. It lets the tests prove,
with stock CellProfiler 4.2.8, that ``--plugins-directory`` is honoured and that the
Default Input Folder (``-i``) holds the experiment's barcode table. Run only by
CellProfiler's own interpreter (``cp run --plugins-directory``).
"""

import csv
import os

from cellprofiler_core.constants.measurement import COLTYPE_INTEGER
from cellprofiler_core.module import Module
from cellprofiler_core.preferences import DEFAULT_INPUT_FOLDER_NAME
from cellprofiler_core.setting.text import Directory, Filename, Text


class CallBarcodes(Module):
    module_name = "CallBarcodes"
    category = "Data Tools"
    variable_revision_number = 1

    def create_settings(self):
        self.csv_directory = Directory("Input data file location", value=DEFAULT_INPUT_FOLDER_NAME)
        self.csv_file_name = Filename("Name of the file", "Barcodes.csv")
        self.barcode_column = Text("Select the column of barcodes to match against", "sgRNA")

    def settings(self):
        return [self.csv_directory, self.csv_file_name, self.barcode_column]

    def prepare_settings(self, setting_values):
        # Like the real plugin, refuse a settings block of another layout (CellProfiler
        # then drops the module: the case cp run's load check refuses).
        assert len(setting_values) == len(self.settings())

    def run(self, workspace):
        path = os.path.join(self.csv_directory.get_absolute_path(), self.csv_file_name.value)
        with open(path, newline="") as f:
            barcodes = [row[self.barcode_column.value] for row in csv.DictReader(f)]
        workspace.measurements.add_image_measurement("Barcodes_Count", len(barcodes))

    def get_measurement_columns(self, pipeline):
        return [("Image", "Barcodes_Count", COLTYPE_INTEGER)]
