"""Speed of hvkit's batched ``handwriting_views`` against torchvision v2 applied per sample.

torchvision's v2 transforms draw one set of random parameters per call, so per-sample
augmentation of a batch needs a Python loop over its images; hvkit draws every sample's
parameters at once and resamples the whole batch with one ``grid_sample``. Both pipelines
here do the same work: random resized crop, small affine, ink dilation/erosion blend,
contrast and gamma jitter, blur with probability 0.2 and Gaussian noise, on 64 x 64 images
(the per-sample loop uses hvkit's own dilation, so the ratio measures batching alone).

Usage::

    python benchmarks/transforms_batched.py [--batch 256] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torchvision.transforms import v2

from hvkit_plugins.transforms import HandwritingViews
from hvkit_plugins.transforms.batched import dilate


def torchvision_per_sample() -> Callable[[torch.Tensor], torch.Tensor]:
    geometry = v2.Compose([
        v2.RandomResizedCrop(64, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=False),
        v2.RandomAffine(degrees=3.0, shear=(-5.0, 5.0), scale=(0.9, 1.1), translate=(0.05, 0.05),
                        interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.0))], p=0.2),
    ])

    def one(image: torch.Tensor) -> torch.Tensor:
        x = geometry(image)[None]
        a = float(torch.empty(()).uniform_(-0.3, 0.3))
        pooled = dilate(x, 1) if a > 0 else -dilate(-x, 1)
        x = x + abs(a) * (pooled - x)
        if torch.rand(()) < 0.8:
            gamma = float(torch.exp(torch.empty(()).uniform_(-0.3, 0.3)))
            x = (float(torch.empty(()).uniform_(0.7, 1.3)) * x.clamp(min=0) ** gamma).clamp(0, 1)
        x = (x + float(torch.empty(()).uniform_(0.0, 0.02)) * torch.randn_like(x)).clamp(0, 1)
        return x[0]

    return lambda images: torch.stack([one(img) for img in images])


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = (torch.rand(args.batch, 1, 64, 64) > 0.9).float()
    ours, generator = HandwritingViews(), torch.Generator().manual_seed(0)
    reference = torchvision_per_sample()
    t_ours = timed(lambda: ours(images, generator), args.repeats)
    t_ref = timed(lambda: reference(images), args.repeats)
    print(f"batch {args.batch} x 1 x 64 x 64, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'pipeline':34} {'ms/batch':>9} {'us/image':>9} {'speed-up':>9}")
    for name, t in (("torchvision v2, per-sample loop", t_ref), ("hvkit handwriting_views, batched", t_ours)):
        print(f"{name:34} {1e3 * t:9.1f} {1e6 * t / args.batch:9.1f} {t_ref / t:9.1f}x")


if __name__ == "__main__":
    main()
