"""What torch.distributed costs and buys: the same KD run in-process, and on 1 and N processes.

Every row distils the same student from the same cached teacher with the same
global batch and seed; only the process count differs. The in-process row is
the baseline: the elastic launcher with one process shows the distributed
path's own overhead (launch and per step), more processes show the scaling.

    python bench/distributed.py --case mnist --epochs 1 --processes 1 2
    python bench/distributed.py --case mnist --epochs 2 --processes 1 --device cuda   # on a GPU machine

Writes bench/results/distributed-<case>-<device>.md and prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill import distributed, losses, models, trainer  # noqa: E402
from distill.losses import MethodConfig  # noqa: E402
from quality import CASES, RESULTS, cached_teacher, load_case_data, top1  # noqa: E402


def run(case_name: str, epochs: int, batch_size: int, device: str, threads: int, train_samples: int) -> dict[str, float]:
    """One KD run on this process (one rank of several when a process group is up); its timings and score."""
    torch.set_num_threads(threads)
    case = CASES[case_name]
    splits = load_case_data(case_name, train_samples, 10_000)
    teacher = cached_teacher(case_name, case, splits, train_samples).to(device).eval()
    torch.manual_seed(0)
    student = models.build(case.student, len(splits.train.classes), splits.train.input_shape[0])
    loss = losses.build_loss([MethodConfig("kd")], teacher, student, splits.train.input_shape)
    config = trainer.TrainConfig(epochs=epochs, batch_size=batch_size, seed=0, device=device)
    result = trainer.distil(student, teacher, loss, splits.train, splits.normalization, config)
    return {
        "distil_s": result.wall_seconds,
        "steps": result.steps,
        "loss": result.final_loss,
        "top1": top1(student.to("cpu"), splits.val, splits.normalization),
        "samples_seen": int(result.visits.sum()),
    }


def _rank(case_name: str, epochs: int, batch_size: int, device: str, threads: int, train_samples: int) -> dict[str, float]:
    device = distributed.init(device)
    outcome = run(case_name, epochs, batch_size, device, threads, train_samples)
    torch.distributed.destroy_process_group()
    return outcome


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="mnist", choices=["mnist", "cifar10"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256, help="the global batch, the same in every row")
    p.add_argument("--train-samples", type=int, default=0, help="0: all")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    work = (args.case, args.epochs, args.batch_size, args.device, args.threads, args.train_samples)

    rows = []
    started = time.perf_counter()
    alone = run(*work)
    rows.append(("in-process (no torch.distributed)", alone, time.perf_counter() - started))
    for n in args.processes:
        started = time.perf_counter()
        ranks = distributed.launch(distributed.Launch(processes_per_node=n, run_id=f"bench-{n}"), _rank, *work)
        rows.append((f"elastic launch, {n} process{'es' if n > 1 else ''}", ranks[0], time.perf_counter() - started))

    base = alone["distil_s"] / alone["steps"]
    lines = [
        f"# torch.distributed overhead and scaling: {args.case}, {args.device}",
        "",
        f"`python bench/distributed.py {' '.join(sys.argv[1:])}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; KD, global batch {args.batch_size}, "
        f"{args.epochs} epoch(s), {args.threads} thread(s) per process. All rows in one run.",
        "",
        "| run | wall s (launch included) | distil s | ms per step | per-step time vs in-process | final loss | test top-1 | samples seen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, wall in rows:
        per_step = r["distil_s"] / r["steps"]
        lines.append(
            f"| {name} | {wall:.1f} | {r['distil_s']:.1f} | {1000 * per_step:.1f} | {per_step / base:.3f}x | "
            f"{r['loss']:.4f} | {r['top1']:.2f} | {r['samples_seen']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"distributed-{args.case}-{args.device}.md").write_text(table)


if __name__ == "__main__":
    main()
