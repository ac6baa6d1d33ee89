"""Classify image files with the student: onnxruntime, numpy and Pillow only.

Ships in the handoff bundle beside the ONNX files, labels.txt and
preprocess.json, and reads everything it needs from them:

    python predict.py image.png [more.png ...] [--model student.int8.onnx] [--top 3]

Prints one line per image: the file, then the top classes with their
probabilities. Preprocessing is the service's own: convert to the colour mode,
resize to the input size (bilinear), scale to [0, 1], subtract the mean and
divide by the std per channel, NCHW float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent


def preprocess(path: Path, spec: dict) -> np.ndarray:
    """One image file -> a (1, C, H, W) float32 array, as the service prepared its evaluation images."""
    if spec["mean"] is None:
        raise SystemExit(
            "preprocess.json has no mean/std: the student was distilled without data and takes the inputs the "
            "teacher took; pass --mean and --std with the teacher's normalisation"
        )
    with Image.open(path) as image:
        image = image.convert(spec["color_mode"])
        if image.size != (spec["width"], spec["height"]):
            image = image.resize((spec["width"], spec["height"]), Image.Resampling.BILINEAR, reducing_gap=None)
        pixels = np.asarray(image, dtype=np.uint8).reshape(spec["height"], spec["width"], spec["channels"])
    x = pixels.astype(np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std)[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", default="student.onnx", help="an ONNX file of this bundle")
    parser.add_argument("--top", type=int, default=1)
    parser.add_argument("--mean", type=float, nargs="+", help="override preprocess.json's mean")
    parser.add_argument("--std", type=float, nargs="+", help="override preprocess.json's std")
    args = parser.parse_args(argv)

    spec = json.loads((HERE / "preprocess.json").read_text())
    if args.mean and args.std:
        spec["mean"], spec["std"] = args.mean, args.std
    labels = (HERE / "labels.txt").read_text().splitlines()
    session = ort.InferenceSession(str(HERE / args.model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for path in args.images:
        logits = session.run(None, {input_name: preprocess(path, spec)})[0][0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[: args.top]
        print(f"{path}\t" + "\t".join(f"{labels[i]} {probabilities[i]:.4f}" for i in best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
