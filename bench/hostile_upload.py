"""Does a zip bomb leave the server alone? Health latency and server memory while bombs are uploaded.

Starts a real server (``distillery serve`` in a child process, on a free port,
in a temporary data directory) and uploads 10 MB archives that inflate to
``--gib`` GiB of zeros, shaped as each torch format (state_dict, TorchScript,
torch.export), with an honest directory and with one that declares 1 KiB.
Meanwhile another thread asks health over and over, each call with a 1 s
deadline, and times every answer (in the client, on the same 2 cores as the
server: its own scheduling delay is part of the latency). Server memory is
its resident size before the uploads against its peak (VmHWM) after.

    python bench/hostile_upload.py --out bench/results/hostile-upload.md

Prints a Markdown table (and writes it to ``--out``); exits 1 if a bomb was
accepted, a health call missed its deadline, or the server's peak grew 1 GiB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.client import Client  # noqa: E402
from service.server import spawn_server, stop_server  # noqa: E402
from tests import hostile_files as hostile  # noqa: E402

LAYOUTS = {
    "state_dict": ({"version": b"3\n", "byteorder": b"little"}, "data.pkl"),
    "torchscript": ({"version": b"3\n", "constants.pkl": b"\x80\x02).", "data.pkl": b"\x80\x02}."}, "code/__torch__/model.py"),
    "exported_program": ({"archive_format": b"pt2", "archive_version": b"0"}, "models/model.json"),
}


def status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=int, default=10, help="what each bomb inflates to")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="hostile-upload-"))
    stream, crc = hostile.deflated_zeros(args.gib << 30)
    bombs = []
    for name, (layout, member) in LAYOUTS.items():
        for honesty, declared in (("honest", args.gib << 30), ("lying", 1024)):
            path = hostile.zip_bomb(folder / f"{name}-{honesty}.zip", layout, member, stream, crc, declared)
            bombs.append((f"{name}, {honesty} directory", path))

    process, address = spawn_server(folder / "data")
    rows = []
    try:
        with Client(address, timeout=120) as client:
            list(client.list_jobs())  # the server answers: its start-up is over
            before = status_bytes(process.pid, "VmRSS")
            accepted = 0
            with hostile.HealthProbe(address, deadline_s=1.0) as health:
                for label, path in bombs:
                    started = time.perf_counter()
                    try:
                        client.upload(path, architecture="lenet5")
                        accepted += 1
                        outcome = "ACCEPTED"
                    except grpc.RpcError as e:
                        outcome = f"{e.code().name}: {e.details()}"
                    rows.append(f"| {label} | {path.stat().st_size / 1e6:.1f} MB | {time.perf_counter() - started:.2f} s | {outcome} |")
            peak = status_bytes(process.pid, "VmHWM")
    finally:
        stop_server(process)

    latencies, misses = sorted(health.latencies), health.misses
    growth = peak - before
    lines = [
        f"# Zip bombs ({args.gib} GiB inflated) against a running server",
        "",
        "| bomb | file | answered in | outcome |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- health: {len(latencies)} answers, p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
        f"max {latencies[-1] * 1e3:.1f} ms; {len(misses)} missed the 1 s deadline",
        f"- server memory: {before / 2**20:.0f} MiB resident before, {peak / 2**20:.0f} MiB peak after "
        f"(+{growth / 2**20:.0f} MiB)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if accepted or misses or growth >= 1 << 30 else 0


if __name__ == "__main__":
    sys.exit(main())
