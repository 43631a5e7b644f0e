"""Channel-role presets for dye-named channels (``exp init --preset``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from starrynight import experiment, index, inventory
from starrynight.cli.main import cli
from starrynight.errors import UserError
from starrynight.imageio import write_tiff
from starrynight.presets import apply_presets, empty_roles, suggest

CP_DYES = ("DAPI", "GFP", "A594", "Cy5", "750")  # how cpg0032 names them
SBS_DYES = ("DAPI", "Cy3", "A594", "Cy5", "Cy7")


@pytest.fixture(scope="module")
def dye_ws(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("dyes")
    images = tmp / "ds" / "sample" / "source_1" / "Batch1" / "images" / "Plate1"
    stem = "WellA1_PointA1_0000"
    write_tiff(
        str(images / "20X_CP_Plate1" / f"{stem}_Channel{','.join(CP_DYES)}_Seq0000.ome.tiff"),
        np.zeros((5, 4, 4), np.uint16),
    )
    for k in (1, 2):
        write_tiff(
            str(
                images
                / f"10X_c{k}_SBS-{k}"
                / f"{stem}_Channel{','.join(SBS_DYES)}_Seq0000.ome.tiff"
            ),
            np.zeros((5, 4, 4), np.uint16),
        )
    ws = str(tmp / "ws")
    inventory.generate(str(tmp / "ds" / "sample"), ws, progress=False)
    index.generate(ws, ws)
    return ws


def test_without_a_preset_dye_named_roles_stay_empty_and_are_reported(dye_ws: str) -> None:
    res = CliRunner().invoke(cli, ["exp", "init", "-w", dye_ws])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert (
        "sbs: roles still empty: required A, C, G, T (channels without a role: Cy3, A594, Cy5, Cy7)"
        in lines
    )
    assert any(
        line.startswith("cp: roles still empty: required cell; optional mito, er, wga, rna")
        for line in lines
    )
    assert any(
        line.startswith("hint: --preset sbs-dyes would fill sbs A, C, G, T") for line in lines
    )
    assert any(line.startswith("hint: --preset cp-dyes would fill cp cell") for line in lines)


def test_presets_fill_every_role_and_the_experiment_validates(dye_ws: str) -> None:
    res = CliRunner().invoke(
        cli, ["exp", "init", "-w", dye_ws, "--preset", "sbs-dyes", "--preset", "cp-dyes"]
    )
    assert res.exit_code == 0, res.output
    assert "roles still empty" not in res.output.replace("cp: roles still empty: optional rna", "")
    assert "cp: roles still empty: optional rna (channels without a role: none)" in res.output
    path = experiment.init_path(dye_ws)
    data = json.loads(Path(path).read_text())
    assert data["sbs"]["roles"] == {
        "nuclei": "DAPI",
        "A": "Cy5",
        "C": "Cy7",
        "G": "Cy3",
        "T": "A594",
    }
    assert data["cp"]["roles"] == {
        "nuclei": "DAPI", "cell": "A594", "mito": "Cy5", "er": "GFP", "wga": "750", "rna": "",
    }  # fmt: skip
    exp = experiment.new(dye_ws, path)
    assert exp.sbs is not None and exp.sbs.roles["G"] == "Cy3"
    assert exp.cp is not None and "rna" not in exp.cp.roles  # empty optional roles dropped


def test_cellprofiler_names_follow_the_preset_roles(dye_ws: str) -> None:
    from starrynight.cellprofiler.loaddata import cp_names, sbs_names

    experiment.new(dye_ws, experiment.init(dye_ws, ("cp-dyes", "sbs-dyes")))
    exp = experiment.load_experiment(dye_ws)
    assert cp_names(exp) == {
        "DAPI": "DNA",
        "GFP": "ER",
        "A594": "Phalloidin",
        "Cy5": "Mito",
        "750": "WGA",
    }
    assert sbs_names(exp) == {"DAPI": "DNA", "Cy3": "G", "A594": "T", "Cy5": "A", "Cy7": "C"}


def test_preset_errors() -> None:
    template = {"sbs": {"channels": ["DAPI", "A", "C", "G", "T"], "roles": {"nuclei": "DAPI"}}}
    with pytest.raises(UserError, match="--preset 'nope': unknown; presets: sbs-dyes, cp-dyes"):
        apply_presets(template, ["nope"])
    with pytest.raises(UserError, match="is for the cp arm but the index has no cp images"):
        apply_presets(template, ["cp-dyes"])
    with pytest.raises(UserError, match="already has preset sbs-dyes"):
        apply_presets(template, ["sbs-dyes", "sbs-dyes"])
    other = {"sbs": {"channels": ["405", "488"], "roles": {}}}
    with pytest.raises(UserError, match=r"matches none of the sbs channels \(405, 488\)"):
        apply_presets(other, ["sbs-dyes"])


def test_a_partial_match_leaves_the_rest_empty_and_says_so() -> None:
    template = {"sbs": {"channels": ["DAPI", "Cy3", "Cy5", "X"], "roles": {"nuclei": "DAPI"}}}
    out = apply_presets(template, ["sbs-dyes"])
    assert out["sbs"]["roles"] == {"nuclei": "DAPI", "A": "Cy5", "C": "", "G": "Cy3", "T": ""}
    assert empty_roles(out) == [
        "sbs: roles still empty: required C, T (channels without a role: X)"
    ]
    assert suggest(out, ["sbs-dyes"]) == []
