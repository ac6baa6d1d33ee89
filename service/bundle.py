"""The edge handoff: metadata inside each ONNX file, and bundle.zip for a device team.

bundle.zip holds everything a team running onnxruntime needs and nothing
about PyTorch: the ONNX files, MODEL_CARD.md, labels.txt, preprocess.json and
predict.py (onnxruntime, numpy and Pillow only).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.data import Normalization
from protos.distillery.v1 import distillery_pb2 as pb
from service import report as report_format

PREDICT_SCRIPT = Path(__file__).resolve().parent.parent / "exporters" / "predict.py"


@dataclass
class Handoff:
    report: pb.Report  # finished: accuracy, latency and recommendations in place
    classes: list[str]
    normalization: Normalization | None  # None: a data-free student takes the teacher's inputs as they were
    teacher_sha256: str

    def preprocess(self) -> dict:
        channels, height, width = self.report.student.input_shape
        return {
            "input_name": "input",
            "output_name": "logits",
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "height": height,
            "width": width,
            "dynamic_batch": self.report.export.dynamic_batch,
            "color_mode": "L" if channels == 1 else "RGB",
            "resize": "bilinear",
            "scale": "divide by 255",
            "mean": self.normalization.mean if self.normalization else None,
            "std": self.normalization.std if self.normalization else None,
        }

    def onnx_metadata(self, artifact: str) -> dict[str, str]:
        """metadata_props for one shipped file: what a runtime needs to feed it and what it was measured at."""
        variant = next(v for v in self.report.variants if v.artifact == artifact)
        return {
            "distillery.job_id": self.report.job_id,
            "distillery.teacher_sha256": self.teacher_sha256,
            "distillery.classes": json.dumps(self.classes),
            "distillery.preprocess": json.dumps(self.preprocess()),
            "distillery.precision": variant.precision,
            "distillery.top1": f"{variant.accuracy.top1:.2f}" if variant.HasField("accuracy") else "not measured",
            "distillery.recommended": str(variant.recommended).lower(),
        }

    def write_zip(self, path: Path, onnx_files: dict[str, Path]) -> Path:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name, file in onnx_files.items():
                bundle.write(file, name)
            bundle.writestr("MODEL_CARD.md", self.model_card(list(onnx_files)))
            bundle.writestr("labels.txt", "\n".join(self.classes) + "\n")
            bundle.writestr("preprocess.json", json.dumps(self.preprocess(), indent=2) + "\n")
            bundle.write(PREDICT_SCRIPT, "predict.py")
        return path

    def model_card(self, files: list[str]) -> str:
        r = self.report
        shipped = [v for v in r.variants if v.artifact in files]
        channels, height, width = r.student.input_shape
        lines = [
            f"# {r.student.architecture}: student of {r.teacher.architecture} (job {r.job_id})",
            "",
            f"**{r.summary}**",
            "",
            "## What it is",
            "",
            f"An image classifier over {len(self.classes)} classes (`labels.txt`, in output order), distilled from a "
            f"{r.teacher.architecture} teacher (sha256 {self.teacher_sha256[:16]}...). Input: float32 NCHW, "
            f"{channels}x{height}x{width}, batch {'any size' if r.export.dynamic_batch else 'fixed at 1'}; "
            "output: logits (softmax for probabilities).",
            "",
            "## Files",
            "",
            "One row per runtime a file was measured in (the same file may run in several).",
            "",
            "| file | precision | runtime | top-1 % | p50 ms at batch 1 | recommended |",
            "|---|---|---|---:|---:|---|",
        ]
        for v in shipped:
            lat = report_format.latency_at(v, 1)
            top1 = f"{v.accuracy.top1:.2f}" if v.HasField("accuracy") else "-"
            verdict = ("yes" if v.recommended else "NO") + (f" ({v.note})" if v.note else "")
            runtime = v.runtime + (f" ({v.execution_provider})" if v.execution_provider else "")
            lines.append(
                f"| `{v.artifact}` | {v.precision} | {runtime} | {top1} | {f'{lat.p50_ms:.3f}' if lat else '-'} | {verdict} |"
            )
        lines += [
            "",
            "## Preprocessing (`preprocess.json`)",
            "",
            "Convert to the colour mode, resize to the input size (bilinear), scale to [0, 1], subtract `mean` and "
            "divide by `std` per channel. `predict.py` does exactly this: "
            "`python predict.py image.png --model student.onnx --top 3` (needs onnxruntime, numpy, Pillow).",
            "",
            "## How it was measured",
            "",
        ]
        lines += [f"- {line}" for line in report_format.how_it_was_made(r)]
        lines += [
            "",
            "## Limits",
            "",
            "- Accuracy was measured on the validation data named above, once, on the final model; expect it to hold "
            "only for inputs like those.",
            "- Latency was measured on the machine in the environment line; on another device, measure again.",
            "- A variant marked NO lost more top-1 against the FP32 student than the job's accuracy budget allows.",
        ]
        if self.normalization is None:
            lines.append(
                "- Distilled without data: there is no dataset normalisation to give. Feed the inputs exactly as "
                "the teacher expected them (predict.py takes --mean and --std)."
            )
        return "\n".join(lines) + "\n"
