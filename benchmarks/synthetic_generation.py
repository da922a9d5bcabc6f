"""Speed of the synthetic handwriting generator, and of its renderer against PIL's line drawing.

The whole generator (styles, splines, fitting, rendering) is timed end to end on one thread;
its renderer (anti-aliased pen discs, one vectorised scatter-max for all images) is then timed
against the obvious alternative, ``PIL.ImageDraw.line`` drawing the same spline polylines
image by image (aliased, one width and one grey level per stroke: less work than ours).

Usage::

    python benchmarks/synthetic_generation.py [--writers 300] [--samples 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from hvkit_plugins.datasets import synthetic


def pil_render(points: np.ndarray, ink: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Each visible run of points as a PIL polyline of width 2 r (the reference)."""
    out = np.empty((len(points), size, size), np.uint8)
    for n, (pts, v, r) in enumerate(zip(points, ink, radius)):
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        visible = np.flatnonzero(v > 0)
        runs = np.split(visible, np.flatnonzero(np.diff(visible) > 1) + 1)
        for run in runs:
            if len(run) > 1:
                draw.line([tuple(p) for p in pts[run]], fill=int(255 * v[run].mean()), width=max(1, round(2 * r)))
        out[n] = np.asarray(image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=300)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captured = {}
    render = synthetic._render

    def capture(*a: object) -> np.ndarray:
        captured["args"] = a
        return render(*a)

    synthetic._render = capture
    start = time.perf_counter()
    images, _ = synthetic.generate_handwriting(num_writers=args.writers, samples_per_writer=args.samples)
    total = time.perf_counter() - start
    synthetic._render = render
    start = time.perf_counter()
    render(*captured["args"])
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    pil_render(*captured["args"])
    t_pil = time.perf_counter() - start
    n = len(images)
    print(f"{n} images of 64 x 64, {args.threads} thread(s)")
    print(f"{'step':40} {'s':>7} {'images/s':>9} {'vs PIL':>7}")
    print(f"{'whole generator (hvkit)':40} {total:7.2f} {n / total:9.0f}")
    print(f"{'render: PIL ImageDraw.line per image':40} {t_pil:7.2f} {n / t_pil:9.0f} {1.0:6.1f}x")
    print(f"{'render: hvkit batched anti-aliased':40} {t_ours:7.2f} {n / t_ours:9.0f} {t_pil / t_ours:6.1f}x")


if __name__ == "__main__":
    main()
