"""The CLI is a client of the running server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from protos.distillery.v1 import distillery_pb2 as pb
from service import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_upload_submit_wait_report(server, teacher_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = ["--address", server[0]]
    assert cli.main([*address, "upload", str(teacher_file), "--architecture", "lenet5"]) == 0
    model_id = capsys.readouterr().out.strip()
    assert model_id.startswith("m-")

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "student: {architecture: lenet5_half}\n"
        "dataset:\n  generated: {num_classes: 4, train_size: 800, val_size: 200, seed: 3}\n"
        "losses: [{kd: {temperature: 3}}]\n"
        "training: {epochs: 1, batch_size: 32}\n"
        "benchmark: {batch_sizes: [1], min_runs: 3, min_seconds: 0.01}\n"
        "device: DEVICE_CPU\n"
    )
    assert cli.main([*address, "submit", str(spec), "--teacher", model_id, "--alpha", "0.5", "--wait"]) == 0
    job_id = capsys.readouterr().out.strip()

    assert cli.main([*address, "report", job_id, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training"]["method"] == "kd(T=3, alpha=0.5)"
    assert cli.main([*address, "report", job_id, "--format", "html", "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and report["summary"] in page

    assert cli.main([*address, "list", "--state", "succeeded"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id))
    assert re.search(r"SUCCEEDED .* 100\.0%  +\d+m\d\ds  ", listed)  # state, progress, time it ran
    assert cli.main([*address, "download", job_id, "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "student.onnx").exists()

    assert cli.main([*address, "health"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert cli.main([*address, "status", "j-missing"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_data_free_flags_build_the_spec() -> None:
    args = cli.parser().parse_args(
        ["submit", "--teacher", "m-1", "--student", "lenet5_half", "--data-free", "dfad", "--input-shape", "1,28,28",
         "--iterations", "300"]
    )
    spec = cli.build_spec(args)
    assert spec.data_free.method == pb.DATA_FREE_METHOD_DFAD and spec.data_free.iterations == 300
    assert (spec.data_free.input_shape.channels, spec.data_free.input_shape.height) == (1, 28)
    assert not spec.HasField("dataset")
    with pytest.raises(SystemExit, match="C,H,W"):
        cli.build_spec(cli.parser().parse_args(["submit", "--input-shape", "28x28"]))


def test_benchmark_only_flags_build_the_spec() -> None:
    args = cli.parser().parse_args(["submit", "--teacher", "m-1", "--benchmark-only", "m-2", "--input-shape", "3,32,32"])
    spec = cli.build_spec(args)
    assert spec.benchmark_only.student_model_id == "m-2" and spec.benchmark_only.input_shape.channels == 3
    assert not spec.HasField("data_free") and not spec.HasField("student")


def test_distributed_flags_build_the_spec() -> None:
    args = cli.parser().parse_args(
        ["submit", "--teacher", "m-1", "--processes-per-node", "8", "--nodes", "2", "--rendezvous-endpoint", "node0:29400"]
    )
    d = cli.build_spec(args).distributed
    assert (d.processes_per_node, d.nodes, d.rendezvous_endpoint, d.run_id) == (8, 2, "node0:29400", "")
    assert not cli.build_spec(cli.parser().parse_args(["submit", "--teacher", "m-1"])).HasField("distributed")


def test_search_flags_put_a_search_block_in_the_spec() -> None:
    args = cli.parser().parse_args(["submit", str(REPO / "examples/mnist-kd.yaml"), "--search",
                                    str(REPO / "examples/search-students.yaml"), "--trials", "5"])
    spec = cli.build_spec(args)
    assert spec.search.trials == 5 and list(spec.search.students) == ["lenet5_half", "cnn_bn_8", "shallow_cnn"]
    assert spec.search.latency.runtime == "onnxruntime" and spec.losses[0].kd.temperature == 4
    with pytest.raises(SystemExit, match="has no search block"):
        cli.build_spec(cli.parser().parse_args(["submit", str(REPO / "examples/mnist-kd.yaml"), "--search"]))


def test_bad_serve_flags_and_missing_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--data-dir", str(tmp_path), "--tls-cert", str(tmp_path / "cert.pem")]) == 2
    assert capsys.readouterr().err == "error: TLS needs both a certificate and a key\n"
    assert cli.main(["--token-file", str(tmp_path / "absent"), "health"]) == 2
    assert "No such file" in capsys.readouterr().err
