"""``exp init`` / ``exp new``: a validated experiment built from the index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from starrynight import experiment, index, inventory, workspace
from starrynight.cli.main import main
from starrynight.errors import UserError


@pytest.fixture
def ws(tmp_path: Path) -> str:
    root = tmp_path / "ds"
    keys = []
    for c in (1, 2):
        keys.append(
            f"s/B/images/P/10X_c{c}_SBS-{c}/WellA1_PointA1_0000_Channel405 nm,c,A,G,T_Seq0.tif"
        )
    keys.append(
        "s/B/images/P/20X_CP_P/WellA1_PointA1_0000_ChannelHoechst,WGA-488,MitoTracker,ER_Seq0.tif"
    )
    keys.append("s/workspace/metadata/Barcodes.csv")
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_text("sgRNA,gene_symbol\n")
    out = str(tmp_path / "ws")
    inventory.generate(str(root), out)
    index.generate(out, out)
    return out


def test_init_guesses_roles(ws: str, tmp_path: Path) -> None:
    path = experiment.init(ws)
    data = json.loads(Path(path).read_text())
    assert data["cp"]["roles"] == {"nuclei": "Hoechst", "cell": "WGA-488", "mito": "MitoTracker"}
    assert data["cp"]["channels"] == ["Hoechst", "WGA-488", "MitoTracker", "ER"]
    assert data["sbs"]["roles"] == {"nuclei": "", "A": "A", "C": "c", "G": "G", "T": "T"}
    assert data["sbs"]["cycles"] == [1, 2]
    assert data["barcodes"] == str(
        tmp_path / "ds" / "s" / "workspace" / "metadata" / "Barcodes.csv"
    )
    assert data["frame"] == {"type": "square", "overlap_pct": 10.0}


def edit(ws: str, tmp_path: Path, change) -> str:
    data = json.loads(Path(experiment.init(ws)).read_text())
    change(data)
    path = tmp_path / "choices.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_new_writes_validated_experiment(ws: str, tmp_path: Path) -> None:
    def choose(d: dict) -> None:
        d["sbs"]["roles"]["nuclei"] = "405 nm"
        d["cp"]["roles"]["extra_er"] = "ER"
        d["frame"] = {"type": "round", "overlap_pct": 5}

    exp = experiment.new(ws, edit(ws, tmp_path, choose))
    assert exp == experiment.load_experiment(ws)
    assert exp.sbs.roles["nuclei"] == "405 nm" and exp.cp.roles["extra_er"] == "ER"
    assert exp.frame.type == "round"
    assert Path(workspace.experiment_path(ws)).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["sbs"]["roles"].update(nuclei="DAPI"),
         "sbs.roles.nuclei = 'DAPI' is not a channel of the sbs arm; channels: 405 nm, c, A, G, T"),
        (lambda d: d["sbs"]["roles"].update(nuclei=""), "sbs.roles lacks nuclei"),
        (lambda d: (d["sbs"]["roles"].update(nuclei="405 nm"), d["sbs"]["channels"].append("Cy7")),
         "sbs.channels: 'Cy7' is not in the index; sbs channels are: 405 nm, c, A, G, T"),
        (lambda d: (d["sbs"]["roles"].update(nuclei="405 nm"), d["sbs"].update(cycles=[1, 2, 3])),
         r"sbs.cycles: \[3\] not in the index"),
        (lambda d: (d["sbs"]["roles"].update(nuclei="405 nm", A="c")), "four different channels"),
        (lambda d: d.update(sbs=None, frame={"type": "hex"}), "frame.type"),
        (lambda d: d.update(sbs=None, colour="red"), "colour"),
        (lambda d: d.update(sbs=None, dataset="other"), "dataset: 'other' not in the index"),
        (lambda d: d.update(sbs=None, barcodes="/nope.csv"), "/nope.csv does not exist"),
        (lambda d: d.update(sbs=None, cp=None), "at least one arm"),
    ],
)  # fmt: skip
def test_new_rejects_bad_choices(ws: str, tmp_path: Path, change, message: str) -> None:
    path = edit(ws, tmp_path, change)
    with pytest.raises(UserError, match=message) as exc:
        experiment.new(ws, path)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(path)
    assert not Path(workspace.experiment_path(ws)).exists()


def test_cli_errors(ws: str, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(SystemExit) as exc:
        main(["exp", "new", "-w", ws, "-i", str(bad)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not valid JSON")
    with pytest.raises(SystemExit):
        main(["exp", "init", "-w", str(tmp_path / "empty")])
    assert "no index" in capsys.readouterr().err
    with pytest.raises(UserError, match="no experiment"):
        experiment.load_experiment(ws)
