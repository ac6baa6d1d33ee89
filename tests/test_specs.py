"""Spec validation: defaults, ranges, and the README's example spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from distill import losses
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs
from service.errors import FailedPrecondition, InvalidArgument

REPO = Path(__file__).resolve().parent.parent


def test_example_spec_is_valid(tmp_path: Path) -> None:
    spec = json_format.ParseDict(yaml.safe_load((REPO / "examples/mnist-kd.yaml").read_text()), pb.JobSpec())
    spec.teacher_model_id = "m-x"
    plan = specs.plan(spec, (tmp_path,), cuda_devices=0)
    assert plan.dataset.root == tmp_path.resolve() and plan.training.device == "cpu"
    assert plan.methods == [losses.MethodConfig("kd", 1.0, {"temperature": 4.0, "alpha": 0.9})]

    # The example search block on top: the search picks the student, so the spec names none.
    json_format.ParseDict(yaml.safe_load((REPO / "examples/search-students.yaml").read_text()), spec.search)
    with pytest.raises(InvalidArgument, match="leave student unset"):
        specs.plan(spec, (tmp_path,), cuda_devices=0)
    spec.ClearField("student")
    plan = specs.plan(spec, (tmp_path,), cuda_devices=0)
    assert plan.search.students == ("lenet5_half", "cnn_bn_8", "shallow_cnn") and plan.search.trial_epochs == 3
    assert plan.search_latency == specs.LatencyPlan(1, "onnxruntime")
    assert specs.plan_from_json(specs.plan_to_json(plan)) == plan


def test_data_free_example_and_defaults(tmp_path: Path) -> None:
    spec = json_format.ParseDict(yaml.safe_load((REPO / "examples/mnist-datafree.yaml").read_text()), pb.JobSpec())
    spec.teacher_model_id = "m-x"
    plan = specs.plan(spec, (tmp_path,), cuda_devices=0)
    assert plan.data_free is not None and plan.methods == []
    assert plan.data_free.input_shape == (1, 28, 28) and plan.dataset is not None
    config = plan.data_free.config
    assert (config.method, config.iterations, config.generator_width, config.device) == ("auto", 700, 16, "cpu")
    assert (config.student_steps, config.replay_steps) == (6, 20)

    bare = pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        data_free=pb.DataFreeSpec(method=pb.DATA_FREE_METHOD_DFAD, input_shape=pb.InputShape(channels=3, height=32, width=32)),
    )
    bare.data_free.balance_weight = 0  # explicit zero: the paper's pure DFAD
    plan = specs.plan(bare, (tmp_path,), cuda_devices=1)
    config = plan.data_free.config
    assert plan.dataset is None and config.method == "dfad" and config.balance_weight == 0
    # batch_size 0: chosen from the teacher's classes when the run starts (datafree.recipe_batch_size)
    assert (config.iterations, config.student_steps, config.batch_size, config.generator_width) == (2000, 2, 0, 64)
    assert (config.target_weight, config.logit_bound) == (1.0, 30.0)
    assert (config.replay_steps, config.replay_memory_mb) == (10, 128)
    bare.data_free.replay_steps = 0  # explicit zero: no replay, as in the papers
    assert specs.plan(bare, (tmp_path,), cuda_devices=1).data_free.config.replay_steps == 0
    assert config.bn_weight == 10.0 and config.student_lr == pytest.approx(0.1)


def test_defaults_fill_an_almost_empty_spec(tmp_path: Path) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
    )
    plan = specs.plan(spec, (tmp_path,), cuda_devices=1)
    assert plan.training.epochs == 10 and plan.training.lr == 0.05 and plan.training.device == "cuda"
    assert plan.benchmark.timing.batch_sizes == (1, 8, 32, 128) and plan.export == specs.ExportPlan()
    assert plan.dataset.generated["train_size"] == 6000


@pytest.mark.parametrize("example", ["mnist-kd.yaml", "mnist-datafree.yaml", "cifar10-8gpu.yaml", "cifar10-specialists.yaml"])
def test_a_plan_is_stored_as_json_and_comes_back_equal(tmp_path: Path, example: str) -> None:
    """CreateJob stores the resolved plan with the job; the worker and every rank run exactly that one."""
    text = (Path(__file__).resolve().parents[1] / "examples" / example).read_text()
    spec = json_format.ParseDict({**yaml.safe_load(text), "teacher_model_id": "m-x"}, pb.JobSpec())
    for root in ("MNIST", "cifar10/train", "cifar10/test"):
        (tmp_path / root).mkdir(parents=True, exist_ok=True)
    plan = specs.plan(spec, (tmp_path,), cuda_devices=8)
    stored = specs.plan_to_json(plan)
    assert specs.plan_from_json(stored) == plan
    assert "pickle" not in stored and json.loads(stored)["teacher_model_id"] == "m-x"  # plain JSON


def test_method_parameters_come_from_the_registry(tmp_path: Path) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
    )
    spec.losses.add(dkd=pb.DecoupledKnowledgeDistillation())
    spec.losses.add(dkd=pb.DecoupledKnowledgeDistillation(alpha=0, temperature=2))
    unset, zero = specs.plan(spec, (tmp_path,), cuda_devices=0).methods
    assert unset.params == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}  # the registry's defaults
    assert zero.params == {"alpha": 0.0, "beta": 8.0, "temperature": 2.0}  # an optional field set to 0 is a value
    spec.losses.add(dkd=pb.DecoupledKnowledgeDistillation(beta=101))
    with pytest.raises(InvalidArgument, match=r"losses\[2\].dkd.beta must be in \[0, 100\]"):
        specs.plan(spec, (tmp_path,), cuda_devices=0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.training.__setattr__("batch_size", -5), "batch_size"),
        (lambda s: s.losses.add(kd=pb.KnowledgeDistillation(temperature=-1)), "temperature"),
        (lambda s: s.losses.add(), "names no method"),
        (lambda s: s.losses.add(attention=pb.AttentionTransfer(beta=-1)), "attention.beta"),
        (lambda s: s.losses.add(fsp=pb.FlowOfSolutionProcedure(layers=[pb.LayerPair(teacher="a", student="b")])), "fsp takes at least 2 layer pairs"),
        (lambda s: s.losses.add(fitnet=pb.FitNet(hint=pb.LayerPair(teacher="a"))), "both a teacher and a student"),
        (lambda s: s.losses.add(weight=-2, kd=pb.KnowledgeDistillation()), "weight"),
        (lambda s: s.export.__setattr__("opset", 7), "export.opset"),
        (lambda s: s.export.__setattr__("accuracy_budget", -1), "export.accuracy_budget"),
        (lambda s: s.export.__setattr__("exporter", 9), "export.exporter"),
        (lambda s: s.export.input_size.__setattr__("width", 32), r"export.input_size.height must be in \[8, 1024\], got 0"),
        (lambda s: s.benchmark.batch_sizes.append(0), "batch_sizes"),
        (lambda s: s.dataset.generated.__setattr__("num_classes", 50), "num_classes"),
        (lambda s: s.dataset.mean.extend([0.5, 0.5]), "mean"),
        (lambda s: s.dataset.exclude_classes.append(-5), "exclude_classes must be class indices"),
        (lambda s: s.dataset.exclude_classes.append(10), r"exclude_classes must name classes 0..9"),
        (lambda s: s.dataset.torchvision.__setattr__("name", "ImageNet"), "unknown"),
    ],
)
def test_out_of_range_fields_are_named(tmp_path: Path, mutate, message: str) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
    )
    mutate(spec)
    with pytest.raises(InvalidArgument, match=message):
        specs.plan(spec, (tmp_path,), cuda_devices=0)


def test_benchmark_only_needs_no_student_architecture_and_no_dataset(tmp_path: Path) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        benchmark_only=pb.BenchmarkOnlySpec(student_model_id="m-y", input_shape=pb.InputShape(channels=3, height=32, width=32)),
    )
    plan = specs.plan(spec, (tmp_path,), cuda_devices=0)
    assert plan.benchmark_only == specs.BenchmarkOnlyPlan("m-y", (3, 32, 32))
    assert plan.dataset is None and plan.student_architecture == ""


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.benchmark_only.__setattr__("student_model_id", ""), "student_model_id is required"),
        (lambda s: s.student.__setattr__("architecture", "lenet5_half"), "leave student unset"),
        (lambda s: s.losses.add(kd=pb.KnowledgeDistillation()), "leave losses unset"),
        (lambda s: s.training.__setattr__("epochs", 3), "leave training unset"),
        (lambda s: s.benchmark_only.ClearField("input_shape"), "input_shape is required"),
        (lambda s: s.benchmark_only.input_shape.__setattr__("channels", 2), "input_shape.channels"),
        (lambda s: s.export.input_size.__setattr__("height", 32), "input_size does not apply"),
    ],
)
def test_bad_benchmark_only_specs_are_named(tmp_path: Path, mutate, message: str) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        benchmark_only=pb.BenchmarkOnlySpec(student_model_id="m-y", input_shape=pb.InputShape(channels=1, height=28, width=28)),
    )
    mutate(spec)
    with pytest.raises(InvalidArgument, match=message):
        specs.plan(spec, (tmp_path,), cuda_devices=0)


def test_distributed_example_needs_8_gpus(tmp_path: Path) -> None:
    spec = json_format.ParseDict(yaml.safe_load((REPO / "examples/cifar10-8gpu.yaml").read_text()), pb.JobSpec())
    spec.teacher_model_id = "m-x"
    plan = specs.plan(spec, (tmp_path,), cuda_devices=8)
    assert plan.distributed.world_size == 8 and plan.training.device == "cuda" and plan.training.batch_size == 1024
    with pytest.raises(FailedPrecondition):
        specs.plan(spec, (tmp_path,), cuda_devices=4)


def test_distributed_plans_and_refusals(tmp_path: Path) -> None:
    def planned(cuda_devices: int = 0, **fields: object) -> specs.JobPlan:
        spec = pb.JobSpec(
            teacher_model_id="m-x",
            student=pb.StudentSpec(architecture="lenet5_half"),
            dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
            distributed=pb.DistributedSpec(**fields),
        )
        return specs.plan(spec, (tmp_path,), cuda_devices=cuda_devices)

    one = planned().distributed
    assert (one.processes_per_node, one.nodes, one.rendezvous_endpoint) == (1, 1, "localhost:0")
    assert one.run_id == planned().distributed.run_id  # identical submissions on two nodes meet
    two_nodes = planned(nodes=2, rendezvous_endpoint="node0.example:29400").distributed
    assert two_nodes.world_size == 2 and two_nodes.run_id.startswith("job-")
    assert planned(cuda_devices=8, processes_per_node=8).distributed.world_size == 8
    assert planned(run_id="kd-2025.1").distributed.run_id == "kd-2025.1"

    with pytest.raises(FailedPrecondition, match="8 GPUs"):
        planned(cuda_devices=8, processes_per_node=9)
    with pytest.raises(FailedPrecondition, match="CPU cores"):
        planned(processes_per_node=256)
    for fields, message in [
        ({"nodes": 2}, "rendezvous_endpoint"),
        ({"nodes": 2, "rendezvous_endpoint": "node0:0"}, "a fixed port"),
        ({"rendezvous_endpoint": "node0"}, "host:port"),
        ({"rendezvous_endpoint": "node0:99999"}, "host:port"),
        ({"run_id": "../etc"}, "run_id"),
        ({"processes_per_node": -1}, "processes_per_node"),
        ({"nodes": 2000, "rendezvous_endpoint": "a:1"}, "nodes"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            planned(**fields)
    with pytest.raises(InvalidArgument, match="batch size"):
        specs.plan(
            pb.JobSpec(
                teacher_model_id="m-x",
                student=pb.StudentSpec(architecture="lenet5_half"),
                dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
                training=pb.TrainingSpec(batch_size=2),
                distributed=pb.DistributedSpec(nodes=4, rendezvous_endpoint="a:1"),
            ),
            (tmp_path,),
            cuda_devices=0,
        )


def _kd_spec(**training: object) -> pb.JobSpec:
    return pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
        training=pb.TrainingSpec(**training),
    )


def test_augmentation_auto_follows_the_budget_and_bad_pairs_are_refused(tmp_path: Path) -> None:
    def plan(spec: pb.JobSpec) -> specs.JobPlan:
        return specs.plan(spec, (tmp_path,), cuda_devices=0)

    assert plan(_kd_spec(epochs=10)).training.augmentation == "none"
    long = plan(_kd_spec(epochs=40)).training
    assert (long.augmentation, long.teacher_views) == ("standard", 8)  # cached views: the benchmark's winner
    live = plan(_kd_spec(epochs=40, teacher_views=0)).training
    assert (live.augmentation, live.teacher_views) == ("standard", 0)
    attention = _kd_spec(epochs=40)
    attention.losses.add(attention=pb.AttentionTransfer())
    attention.losses.add(kd=pb.KnowledgeDistillation())
    assert plan(attention).training.teacher_views == 0  # needs the teacher live: views are not the default then
    searched = _kd_spec(epochs=40)
    searched.search.methods[:] = ["kd", "attention+kd"]  # so may a search's trials
    assert plan(searched).training.teacher_views == 0
    assert plan(_kd_spec(epochs=40, augmentation=pb.AUGMENTATION_NONE)).training.augmentation == "none"
    views = plan(_kd_spec(augmentation=pb.AUGMENTATION_STANDARD, teacher_views=4)).training
    assert (views.augmentation, views.teacher_views) == ("standard", 4)

    dkd = _kd_spec(augmentation=pb.AUGMENTATION_STRONG)
    dkd.losses.add(dkd=pb.DecoupledKnowledgeDistillation())
    refusals = {
        "dkd needs one class per image": dkd,
        "STRONG mixes images: use STANDARD": _kd_spec(augmentation=pb.AUGMENTATION_STRONG, teacher_views=2),
        "need an augmentation to take views of": _kd_spec(augmentation=pb.AUGMENTATION_NONE, teacher_views=2),
    }
    shards = _kd_spec(augmentation=pb.AUGMENTATION_STANDARD, teacher_views=2)
    shards.dataset.webdataset.train_shards.append("a.tar")
    shards.dataset.webdataset.val_shards.append("b.tar")
    refusals["WebDataset shards are streams"] = shards
    attention = _kd_spec(augmentation=pb.AUGMENTATION_STANDARD, teacher_views=2)
    attention.losses.add(attention=pb.AttentionTransfer())
    refusals["attention need it live"] = attention
    labels_only = _kd_spec(augmentation=pb.AUGMENTATION_STANDARD, teacher_views=2)
    labels_only.losses.add(cross_entropy=pb.CrossEntropy())
    refusals["use no teacher"] = labels_only
    data_free = _kd_spec(augmentation=pb.AUGMENTATION_STANDARD)
    data_free.data_free.input_shape.CopyFrom(pb.InputShape(channels=1, height=28, width=28))
    data_free.training.ClearField("epochs")
    refusals["data-free generates its inputs"] = data_free
    for message, spec in refusals.items():
        with pytest.raises(InvalidArgument, match=message):
            plan(spec)


def test_specialists_refuse_what_would_train_or_time_one_network(tmp_path: Path) -> None:
    spec = pb.JobSpec(
        teacher_model_id="m-x",
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset()),
    )
    spec.losses.add(specialists=pb.SpecialistNetworks(specialists=4))
    assert specs.plan(spec, (tmp_path,), cuda_devices=0).methods[0].params["specialists"] == 4
    spec.training.augmentation = pb.AUGMENTATION_STANDARD  # it reads only the teacher's logits: cached views apply
    assert specs.plan(spec, (tmp_path,), cuda_devices=0).training.teacher_views > 0
    spec.training.augmentation = pb.AUGMENTATION_AUTO
    refusals = [
        (lambda s: s.distributed.__setattr__("processes_per_node", 2), "drop distributed"),
        (lambda s: s.student.auto.__setattr__("max_latency_ms", 5), "name student.architecture"),
        (lambda s: s.losses.add(specialists=pb.SpecialistNetworks()), "one specialists term at most"),
    ]
    for mutate, message in refusals:
        changed = pb.JobSpec()
        changed.CopyFrom(spec)
        mutate(changed)
        if changed.student.HasField("auto"):
            changed.student.ClearField("architecture")
        with pytest.raises(InvalidArgument, match=message):
            specs.plan(changed, (tmp_path,), cuda_devices=0)
