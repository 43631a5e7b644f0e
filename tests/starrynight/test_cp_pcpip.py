"""PCPIP's pipelines on our LoadData CSVs: per-step columns, one real run per step.

The pipelines are ``tests/data/cellprofiler/pcpip_*.cppipe``, written with CellProfiler's
own classes by ``make_pcpip_fixtures.py``: for each PCPIP step they read the images,
group by the metadata and name their outputs with the ``\\g<...>`` tags the Broad's
pipelines do (the Broad's files themselves are not copied into this repository). What a
pipeline reads is taken from CellProfiler 4.2.8 loading it (``pipeline_needs.py``), not
from our own parser.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from starrynight import experiment, workspace
from starrynight.cellprofiler import cppipe
from starrynight.cellprofiler import loaddata as ld
from starrynight.cellprofiler import run as cprun
from starrynight.errors import UserError
from starrynight.imageio import read_image, write_tiff
from starrynight.index import normalise_channel
from tests.starrynight.cellprofiler_helpers import (
    PIPELINES,
    PLUGINS,
    pipeline_needs,
    require_cellprofiler,
    requires_cellprofiler,
)
from tests.starrynight.test_cp_loaddata import (
    CP_CHANNELS,
    CYCLES,
    SBS_CHANNELS,
    SITES,
    cp_value,
    make_workspace,
)

REPO = Path(__file__).resolve().parents[2]
#: Step -> the fixture that plays its PCPIP pipeline.
FIXTURES = {
    "illum_calc_cp": "pcpip_1_illum_cp.cppipe",
    "illum_apply_cp": "pcpip_2_apply_cp.cppipe",
    "segcheck_cp": "pcpip_3_segcheck.cppipe",
    "illum_calc_sbs": "pcpip_5_illum_sbs.cppipe",
    "illum_apply_sbs": "pcpip_6_apply_sbs.cppipe",
    "preprocess_sbs": "pcpip_7_preprocess.cppipe",
    "analysis": "pcpip_9_analysis.cppipe",
}
ILLUM = 2.0  # every illumination function: corrected = raw / 2
CORR = 1234  # every corrected CP image
BARCODES = "sgRNA,gene_symbol\nACGT,GENE1\nTTGA,GENE2\nCCAT,GENE3\n"


def materialise_images(ws: str) -> None:
    """Real illumination functions, corrected and aligned images where the steps read them."""
    cp = [normalise_channel(c) for c in CP_CHANNELS]
    sbs = [normalise_channel(c) for c in SBS_CHANNELS]
    flat = np.full((8, 8), ILLUM, np.float32)
    for n in cp:
        _save_npy(workspace.illum_path(ws, "Plate1", n), flat)
    for n in sbs:
        for k in CYCLES:
            _save_npy(workspace.illum_path(ws, "Plate1", n, k), flat)
    for site in SITES:
        for n in cp:
            path = workspace.corrected_path(ws, "Plate1", "A1", site, n)
            write_tiff(path, np.full((8, 8), CORR, np.uint16))
        for k in CYCLES:
            for i, n in enumerate(sbs):
                path = workspace.aligned_path(ws, "Plate1", "A1", site, k, n)
                write_tiff(path, np.full((8, 8), 100 * k + 10 * i + site, np.uint16))


def _save_npy(path: str, array: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


@pytest.fixture(scope="module")
def pcpip_ws(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("pcpip")
    _, ws = make_workspace(tmp)
    materialise_images(ws)
    barcodes = tmp / "Barcodes_screen.csv"  # any name: cp run stages it as Barcodes.csv
    barcodes.write_text(BARCODES)
    data = json.loads(Path(workspace.experiment_path(ws)).read_text())
    data["barcodes"] = str(barcodes)
    edited = tmp / "experiment.json"
    edited.write_text(json.dumps(data))
    experiment.new(ws, str(edited))
    for step in FIXTURES:
        ld.write_loaddata(ws, step)
    return ws


def header(ws: str, step: str) -> list[str]:
    [(_, uri)] = ld.list_csvs(ws, step)
    with open(uri, newline="") as f:
        return next(csv.reader(f))


@requires_cellprofiler
def test_each_steps_csv_holds_what_its_pcpip_pipeline_reads(pcpip_ws: str) -> None:
    paths = {step: PIPELINES / name for step, name in FIXTURES.items()}
    needs = pipeline_needs(*paths.values())
    for step, path in paths.items():
        need = needs[str(path)]
        assert need["load_errors"] == [], (step, need["load_errors"])
        assert need["images"], step  # the parse found what the pipeline reads
        cols = set(header(pcpip_ws, step))
        for image in need["images"]:
            assert {f"FileName_{image}", f"PathName_{image}"} <= cols, (step, image)
        for tag in need["metadata"]:
            assert f"Metadata_{tag}" in cols, (step, tag)
    # the ones the issue names: bare names in step 3, the well value PCPIP 2/6/7 save with
    assert {"DNA", "Phalloidin"} <= set(needs[str(paths["segcheck_cp"])]["images"])
    assert "Well_Value" in needs[str(paths["illum_apply_cp"])]["metadata"]
    assert "SBSCycle" in needs[str(paths["illum_calc_sbs"])]["metadata"]


def test_readme_shows_the_per_step_column_table() -> None:
    assert ld.column_table() in (REPO / "README.md").read_text()


def run(ws: str, step: str, **kw) -> Path:
    # The pre-run load check costs another CellProfiler start: tested once, below.
    report = cprun.run_pipeline(
        ws, step, str(PIPELINES / FIXTURES[step]), cellprofiler=require_cellprofiler(),
        check_load=False, **kw,
    )  # fmt: skip
    assert report.status.value == "succeeded", report.failures
    [unit] = report.units
    return Path(unit.output)


def image_rows(out: Path) -> list[dict[str, str]]:
    with (out / "MyExpt_Image.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# Step 1 (illum_calc_cp) runs through CellProfiler in test_cp_cellprofiler.py and
# test_illum_cellprofiler.py; each start costs a JVM, so it is not repeated here.


@requires_cellprofiler
def test_cp_illum_apply_saves_with_well_value(pcpip_ws: str) -> None:
    out = run(pcpip_ws, "illum_apply_cp")
    for site in SITES:
        # Plate_\g<Plate>_Well_\g<Well_Value>_Site_\g<Site>_CorrDNA: DAPI is frame 2
        got = read_image(str(out / f"Plate_Plate1_Well_A1_Site_{site}_CorrDNA.tiff"))
        assert np.allclose(got, cp_value(2, site) / ILLUM, atol=1)


@requires_cellprofiler
def test_segcheck_reads_corrected_images_by_bare_name(pcpip_ws: str) -> None:
    rows = image_rows(run(pcpip_ws, "segcheck_cp"))
    assert [r["Metadata_Site"] for r in rows] == ["0", "1"]
    for r in rows:
        assert float(r["Intensity_MeanIntensity_DNA"]) == pytest.approx(CORR / 65535)


@requires_cellprofiler
def test_sbs_illum_calc_groups_by_sbs_cycle(pcpip_ws: str) -> None:
    out = run(pcpip_ws, "illum_calc_sbs")
    for k in CYCLES:  # \g<Plate>_Cycle\g<SBSCycle>_Illum<Base>.npy, one set per cycle
        for base in ("A", "C", "G", "T", "DNA"):
            assert (out / f"Plate1_Cycle{k}_Illum{base}.npy").is_file()


@requires_cellprofiler
def test_sbs_illum_apply_saves_every_cycle_per_site(pcpip_ws: str) -> None:
    out = run(pcpip_ws, "illum_apply_sbs")
    for site in SITES:
        for k in CYCLES:  # raw SBS images are 100 * k in every channel
            got = read_image(str(out / f"Plate_Plate1_Well_A1_Site_{site}_Cycle{k:02d}_A.tiff"))
            assert np.allclose(got, 100 * k / ILLUM, atol=1)
        assert (out / f"Plate_Plate1_Well_A1_Site_{site}_Cycle01_DAPI.tiff").is_file()


@requires_cellprofiler
def test_preprocess_reads_aligned_cycles(pcpip_ws: str) -> None:
    rows = image_rows(run(pcpip_ws, "preprocess_sbs"))
    a = SBS_CHANNELS.index("A")
    for r in rows:
        site = int(r["Metadata_Site"])
        want = (200 + 10 * a + site) / 65535
        assert float(r["Intensity_MeanIntensity_Cycle02_A"]) == pytest.approx(want)
        assert float(r["Intensity_MeanIntensity_Cycle01_DAPI"]) > 0


@requires_cellprofiler
def test_analysis_finds_barcodes_in_the_default_input_folder(pcpip_ws: str) -> None:
    out = run(pcpip_ws, "analysis", plugins=str(PLUGINS))
    rows = image_rows(out)
    assert [r["Barcodes_Count"] for r in rows] == ["3", "3"]
    staged = Path(workspace.cellprofiler_dir(pcpip_ws, "analysis"), "_input", "Barcodes.csv")
    assert staged.read_text() == BARCODES
    for r in rows:
        assert float(r["Intensity_MeanIntensity_CorrDNA"]) == pytest.approx(CORR / 65535)


def test_a_pipeline_naming_a_missing_plugin_fails_with_one_line(pcpip_ws: str) -> None:
    pipe = str(PIPELINES / "pcpip_7_plugin.cppipe")
    with pytest.raises(UserError) as err:
        cprun.run_pipeline(pcpip_ws, "preprocess_sbs", pipe, cellprofiler="/bin/false")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"{pipe}: module 4 CompensateColors is not installed: it is not part of CellProfiler "
        "4.2.8 and no --plugins-directory was given; if it is a CellProfiler plugin (from "
        "https://github.com/CellProfiler/CellProfiler-plugins), put its .py file in a folder "
        "and pass --plugins-directory FOLDER"
    )
    with pytest.raises(UserError, match=r"neither CellProfiler 4\.2\.8 nor --plugins-directory"):
        cprun.run_pipeline(
            pcpip_ws, "preprocess_sbs", pipe, cellprofiler="/bin/false", plugins=str(PLUGINS)
        )
    # the CallBarcodes double is found by its module_name, whatever its file is called
    info = cppipe.check_pipeline(str(PIPELINES / FIXTURES["analysis"]))
    cppipe.check_modules(info, str(PLUGINS))
    assert cppipe.plugin_modules(str(PLUGINS)) == {"CallBarcodes": str(PLUGINS / "callbarcodes.py")}


def test_module_count_larger_warns_smaller_is_refused(tmp_path: Path) -> None:
    text = (PIPELINES / FIXTURES["segcheck_cp"]).read_text()
    assert "ModuleCount:3\n" in text
    more = tmp_path / "more.cppipe"
    more.write_text(text.replace("ModuleCount:3\n", "ModuleCount:4\n"))
    assert cppipe.check_pipeline(str(more)).warnings  # CellProfiler runs the 3 that follow
    fewer = tmp_path / "fewer.cppipe"
    fewer.write_text(text.replace("ModuleCount:3\n", "ModuleCount:2\n"))
    with pytest.raises(UserError, match=r"would silently skip module\(s\) 3 ExportToSpreadsheet"):
        cppipe.check_pipeline(str(fewer))


def test_default_input_folder_needs(pcpip_ws: str, tmp_path: Path) -> None:
    info = cppipe.check_pipeline(str(PIPELINES / FIXTURES["analysis"]))
    assert [(m.name, f) for m, f in info.default_input_files()] == [
        ("CallBarcodes", "Barcodes.csv")
    ]
    with pytest.raises(UserError, match=r"--input-folder .* has no Barcodes.csv"):
        cprun.stage_inputs(pcpip_ws, "analysis", info, str(tmp_path))
    (tmp_path / "Barcodes.csv").write_text(BARCODES)
    folder, files = cprun.stage_inputs(pcpip_ws, "analysis", info, str(tmp_path))
    assert (folder, files) == (str(tmp_path), [str(tmp_path / "Barcodes.csv")])
    other = tmp_path / "other.cppipe"
    other.write_text(
        (PIPELINES / FIXTURES["analysis"]).read_text().replace("file:Barcodes.csv", "file:x.csv")
    )
    with pytest.raises(UserError, match=r"reads x\.csv from the Default Input Folder; starrynight"):
        cprun.stage_inputs(pcpip_ws, "analysis", cppipe.check_pipeline(str(other)))


LOG = """\
Times reported are CPU and Wall-clock times for each module
Failed to load pipeline
Traceback (most recent call last):
  File "/cp/_pipeline.py", line 543, in setup_modules
    module = self.setup_module(
ValueError: Could not find the CallBarcodes module
Tue Dec  1 20:04:37 2026: Image # 1, module LoadData # 1: CPU_time = 0.86 secs
pipeline_exception
Error detected during run of module MeasureImageIntensity
Traceback (most recent call last):
  File "/cp/measureimageintensity.py", line 232, in run
    image = workspace.image_set.get_image(im, must_be_grayscale=True)
ValueError: The CorrDNA image is missing from the pipeline.
Tue Dec  1 20:04:39 2026: Image # 1, module MeasureImageIntensity # 2: CPU_time = 0.00 secs
"""


def test_cellprofilers_own_error_is_the_failure_reason() -> None:
    assert cprun.cellprofiler_error(LOG) == (
        "could not load the pipeline (ValueError: Could not find the CallBarcodes module); "
        "module MeasureImageIntensity: ValueError: The CorrDNA image is missing from the "
        "pipeline."
    )
    assert cprun.cellprofiler_error("all fine\nTue Dec 1: Image # 1, module X # 1\n") is None
    reason = "exit code 1: Tue Dec  1 20:04:39 2026: Image # 1, module MeasureImageIntensity"
    assert cprun._explain(reason, LOG).startswith("exit code 1: CellProfiler could not load")


@requires_cellprofiler
def test_a_failing_unit_reports_the_module_and_exception(pcpip_ws: str) -> None:
    # segcheck's CSV names images DNA/Phalloidin; a pipeline reading CorrDNA fails in
    # CellProfiler, and the reason is CellProfiler's own error, not its last log line.
    report = cprun.run_pipeline(
        pcpip_ws, "segcheck_cp", str(PIPELINES / FIXTURES["analysis"]),
        cellprofiler=require_cellprofiler(), plugins=str(PLUGINS), check_load=False,
    )  # fmt: skip
    assert report.status.value == "failed"
    [reason] = report.failures.values()
    assert "CellProfiler module MeasureImageIntensity" in reason
    assert "ValueError: The CorrDNA image is missing from the pipeline." in reason


def test_analysis_refuses_to_pair_different_site_grids(tmp_path: Path) -> None:
    _, ws = make_workspace(tmp_path)
    materialise_images(ws)
    extra = next((tmp_path / "ds").rglob("20X_CP_Plate1"))
    src = next(extra.glob("WellA1_PointA1_0001_*"))
    (extra / src.name.replace("_0001_", "_0002_").replace("Seq0001", "Seq0002")).write_bytes(
        src.read_bytes()
    )
    from starrynight import index, inventory

    inventory.generate(str(tmp_path / "ds" / "sample"), ws, progress=False)
    index.generate(ws, ws)
    with pytest.raises(UserError) as err:
        ld.write_loaddata(ws, "analysis")
    assert str(err.value).startswith(
        "step analysis: plate 'Plate1' well 'A1': CP has 3 site(s) (0-2) and SBS 2 (0-1); "
        "the arms were imaged on different site grids"
    )


@requires_cellprofiler
def test_a_module_cellprofiler_cannot_build_is_refused_before_the_run(
    pcpip_ws: str, tmp_path: Path
) -> None:
    # CellProfiler drops a module it cannot build, runs the rest and exits 0; here the
    # plugin's settings do not match the block (as a plugin of another version).
    text = (PIPELINES / FIXTURES["analysis"]).read_text()
    broken = tmp_path / "broken.cppipe"
    broken.write_text(text.replace("    Name of the file:Barcodes.csv\n", ""))
    with pytest.raises(UserError) as err:
        cprun.run_pipeline(
            pcpip_ws, "analysis", str(broken), cellprofiler=require_cellprofiler(),
            plugins=str(PLUGINS),
        )  # fmt: skip
    assert str(err.value).startswith(
        f"{broken}: CellProfiler 4.2.8 cannot load module 3 CallBarcodes ("
    )
    assert "and would run the pipeline without it; the CallBarcodes of --plugins-directory" in (
        str(err.value)
    )
    info = cppipe.check_pipeline(str(PIPELINES / FIXTURES["analysis"]))
    assert cppipe.check_loads(info, require_cellprofiler(), str(PLUGINS)) is True
