"""Nodes, composition, DAG compilation and validation, drawing and JSON."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pipecraft
from pipecraft import (
    DAG,
    Command,
    Parallel,
    Pipeline,
    PipelineError,
    PyFunction,
    Resources,
    Scatter,
    Seq,
)
from pipecraft.testing import noop, write_text


def cmd(name: str, inputs=(), outputs=(), **kw) -> Command:
    return Command(name=name, argv=["true"], inputs=inputs, outputs=outputs, **kw)


def test_seq_parallel_scatter_edges(tmp_path: Path) -> None:
    p = Pipeline(
        "p",
        Seq(
            cmd("a"),
            Parallel(cmd("b"), Seq(cmd("c1"), cmd("c2"))),
            Scatter("s", ["x", "y"], lambda i: Seq(cmd(f"s1-{i}"), cmd(f"s2-{i}"))),
            cmd("z"),
        ),
    )
    dag = p.compile()
    assert set(dag.edges) == {
        ("a", "b"),
        ("a", "c1"),
        ("c1", "c2"),
        ("b", "s1-x"),
        ("c2", "s1-x"),
        ("b", "s1-y"),
        ("c2", "s1-y"),
        ("s1-x", "s2-x"),
        ("s1-y", "s2-y"),
        ("s2-x", "z"),
        ("s2-y", "z"),
    }
    order = list(dag.nodes)
    for a, b in dag.edges:
        assert order.index(a) < order.index(b)
    assert dag.groups == {
        "s1-x": ("s#0", 0),
        "s2-x": ("s#1", 0),
        "s1-y": ("s#0", 1),
        "s2-y": ("s#1", 1),
    }
    assert dag.descendants("c1") == {"c2", "s1-x", "s1-y", "s2-x", "s2-y", "z"}


def test_nested_scatter_groups_by_innermost_step() -> None:
    def plate(p: str) -> Scatter:
        return Scatter("well", ["A1", "A2"], lambda w: cmd(f"seg-{p}-{w}"))

    dag = Pipeline("n", Seq(Scatter("plate", ["P1", "P2"], plate), cmd("end"))).compile()
    assert {dag.groups[n] for n in dag.nodes if n != "end"} == {
        ("well#0", 0),
        ("well#0", 1),
        ("well#0", 2),
        ("well#0", 3),
    }
    assert sorted(dag.deps["end"]) == ["seg-P1-A1", "seg-P1-A2", "seg-P2-A1", "seg-P2-A2"]


def test_data_edges_from_files_and_directories(tmp_path: Path) -> None:
    d = tmp_path / "out dir, 1"
    p = Pipeline(
        "p",
        Parallel(
            cmd("reader-file", inputs=[str(d / "sub" / "f.txt")]),
            cmd("writer-dir", outputs=[str(d) + "/"]),
            cmd("reader-s3", inputs=["s3://bucket/x/y.parquet"]),
            cmd("writer-s3", outputs=["s3://bucket/x"]),
        ),
    )
    dag = p.compile()
    assert set(dag.edges) == {("writer-dir", "reader-file"), ("writer-s3", "reader-s3")}
    assert list(dag.nodes).index("writer-dir") < list(dag.nodes).index("reader-file")


def test_existing_input_is_fine_missing_input_is_named(tmp_path: Path) -> None:
    f = tmp_path / "present.txt"
    f.write_text("x")
    Pipeline("ok", cmd("a", inputs=[str(f)])).compile()
    with pytest.raises(PipelineError, match=r"'b' reads '.*absent\.txt'"):
        Pipeline(
            "bad", Parallel(cmd("a"), cmd("b", inputs=[str(tmp_path / "absent.txt")]))
        ).compile()
    # check_inputs=False is for pipelines whose inputs appear later (other machine, S3)
    Pipeline("later", cmd("b", inputs=[str(tmp_path / "absent.txt")]), check_inputs=False).compile()


def test_duplicate_name_is_an_error() -> None:
    with pytest.raises(PipelineError, match="duplicate node name 'a'"):
        Pipeline("p", Seq(cmd("a"), cmd("a"))).compile()
    with pytest.raises(PipelineError, match="duplicate node name 'w'"):
        Pipeline("p", Scatter("s", [1, 2], lambda i: cmd("w"))).compile()


def test_two_writers_of_one_output_are_named(tmp_path: Path) -> None:
    out = str(tmp_path / "o.txt")
    with pytest.raises(PipelineError, match=r"nodes 'a' and 'b' both write"):
        Pipeline("p", Parallel(cmd("a", outputs=[out]), cmd("b", outputs=[out + "/"]))).compile()


def test_cycle_names_its_nodes(tmp_path: Path) -> None:
    x, y = str(tmp_path / "x"), str(tmp_path / "y")
    p = Pipeline(
        "p",
        Parallel(cmd("a", inputs=[y], outputs=[x]), cmd("b", inputs=[x], outputs=[y]), cmd("c")),
    )
    with pytest.raises(PipelineError, match=r"cycle between nodes: '(a|b)' -> '(a|b)' -> '\1'"):
        p.compile()
    # a composition edge against a data edge is a cycle too
    q = Pipeline("q", Seq(cmd("first", inputs=[y]), cmd("second", outputs=[y])))
    with pytest.raises(PipelineError, match="cycle between nodes"):
        q.compile()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Command(name="bad name", argv=["x"]), "node name 'bad name' is invalid"),
        (lambda: Command(name="a", argv=[]), "argv is empty"),
        (lambda: Command(name="a", argv="echo hi"), "argv must be a list"),
        (lambda: Command(name="a", argv=["x"], inputs="f.txt"), "inputs must be a list"),
        (lambda: Command(name="a", argv=["x"], retries=-1), "retries=-1"),
        (lambda: Resources(cpus=0), "Resources.cpus"),
        (lambda: PyFunction(name="a", func=lambda: None), "cannot be referenced by name"),
        (lambda: PyFunction(name="a", func=noop, kwargs={"x": object()}), "not JSON-serialisable"),
        (lambda: Seq(cmd("a"), "b"), r"Seq\(...\) got 'b'"),
        (lambda: Pipeline("p", Scatter("s", [1], lambda i: 5)).compile(), "body returned 5"),
    ],
)
def test_bad_nodes_and_compositions(make, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        make()


def test_json_round_trip_keeps_nodes_edges_and_groups(tmp_path: Path) -> None:
    out = str(tmp_path / "a, b.txt")
    p = Pipeline(
        "p",
        Seq(
            PyFunction(
                name="w",
                func=write_text,
                kwargs={"path": out, "text": "hi"},
                outputs=[out],
                resources=Resources(2, 512),
                retries=2,
                env={"K": "V"},
            ),
            Scatter(
                "s",
                ["x", "y"],
                lambda i: Command(name=f"c-{i}", argv=["cat", out], inputs=[out], image="img:1"),
            ),
        ),
    )
    text = p.to_json()
    json.loads(text)
    q = Pipeline.from_json(text)
    a, b = p.compile(), q.compile()
    assert list(a.nodes) == list(b.nodes)
    assert all(a.nodes[n] == b.nodes[n] for n in a.nodes)
    assert a.deps == b.deps and a.groups == b.groups
    assert b.nodes["w"].func == "pipecraft.testing:write_text"
    assert b.to_json() == text


def test_json_errors_are_one_line() -> None:
    with pytest.raises(PipelineError, match="not valid JSON"):
        DAG.from_json("{nope")
    with pytest.raises(PipelineError, match="version"):
        DAG.from_json('{"name": "x", "nodes": []}')
    bad_edge = {"pipecraft": 1, "name": "x", "nodes": [cmd("a").to_dict()], "edges": [["a", "b"]]}
    with pytest.raises(PipelineError, match="unknown node 'b'"):
        DAG.from_dict(bad_edge)
    bad_kind = {"pipecraft": 1, "name": "x", "nodes": [{"kind": "lambda", "name": "a"}]}
    with pytest.raises(PipelineError, match="node kind 'lambda' is unknown"):
        DAG.from_dict(bad_kind)


def test_dot_and_mermaid_name_every_node_and_edge() -> None:
    p = Pipeline("draw", Seq(cmd("a"), Parallel(cmd("b[x=1]"), cmd("c"))))
    dot = p.to_dot()
    assert dot.startswith('digraph "draw" {')
    assert '"a" -> "b[x=1]";' in dot and '"a" -> "c";' in dot
    mer = p.to_mermaid()
    assert mer.splitlines()[0] == "flowchart LR"
    assert 'n1["b[x=1]"]' in mer and "n0 --> n1" in mer and "n0 --> n2" in mer


def test_fingerprint_changes_with_command_not_with_resources() -> None:
    a = cmd("a")
    assert a.fingerprint() == cmd("a", resources=Resources(4, 9000), retries=3).fingerprint()
    assert a.fingerprint() != Command(name="a", argv=["false"]).fingerprint()
    assert a.fingerprint() != cmd("a", outputs=["x"]).fingerprint()


def test_pipecraft_imports_nothing_from_the_layers_above() -> None:
    forbidden = ("starrynight", "dagster_defs", "conductor", "dagster")
    root = Path(pipecraft.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path} imports {n}"
    code = (
        "import sys, pipecraft, pipecraft.backends.local, pipecraft.backends.snakemake, "
        "pipecraft.backends.aws_batch, pipecraft.run_node, pipecraft.testing\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {forbidden!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
