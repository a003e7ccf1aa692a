"""Time the evaluation's matrix work against one plain matmul of the same features.

retrieval_recall at COCO's test size (5,000 images x 25,000 captions, D=512) and zeroshot_topk
at 10,000 images x 1,000 classes; the reference for each is a single full (N x M) similarity
matmul in the same run, so the printed ratio says what the chunking, top-k and bookkeeping cost
on top of the unavoidable arithmetic. Best of --repeats timings each.

    python bench/retrieval.py [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainers.evaluate.metrics import retrieval_recall, zeroshot_topk


def best_time(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    timings = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        timings.append(time.perf_counter() - start)
    return min(timings)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_features(
    num_images: int, num_captions: int, dim: int, device: torch.device, noise_scale: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images and noisy captions of them (num_captions / num_images captions each), normalized.

    The noise is large enough (a true pair's cosine is about 0.2) that recall is far from 1, so
    the top-k lists are not degenerate.
    """
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    caption_to_image = torch.arange(num_captions) * num_images // num_captions
    noise = torch.randn(num_captions, dim, generator=generator) / dim**0.5
    captions = F.normalize(images[caption_to_image] + noise_scale * noise, dim=1)
    return images.to(device), captions.to(device), caption_to_image.to(device)


def bench_retrieval(device: torch.device, repeats: int) -> None:
    images, captions, caption_to_image = paired_features(5_000, 25_000, 512, device)
    matmul_s = best_time(lambda: images @ captions.T, repeats, device)
    recall_s = best_time(lambda: retrieval_recall(images, captions, caption_to_image), repeats, device)
    recalls = retrieval_recall(images, captions, caption_to_image)
    print(
        f"retrieval 5000 x 25000, D=512: {recall_s:.3f} s; full matmul {matmul_s:.3f} s; "
        f"ratio {recall_s / matmul_s:.2f}  (i2t_r1 {recalls['i2t_r1']:.3f}, t2i_r1 {recalls['t2i_r1']:.3f})"
    )


def bench_zeroshot(device: torch.device, repeats: int) -> None:
    # the same generator, read the other way: 1,000 class vectors and 10 noisy images of each
    classifier, images, labels = paired_features(1_000, 10_000, 512, device)
    matmul_s = best_time(lambda: images @ classifier.T, repeats, device)
    topk_s = best_time(lambda: zeroshot_topk(images, classifier, labels), repeats, device)
    accuracies = zeroshot_topk(images, classifier, labels)
    print(
        f"zeroshot 10000 x 1000 classes, D=512: {topk_s:.3f} s; full matmul {matmul_s:.3f} s; "
        f"ratio {topk_s / matmul_s:.2f}  (top1 {accuracies['top1']:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {args.repeats}")
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        bench_retrieval(device, args.repeats)
        bench_zeroshot(device, args.repeats)


if __name__ == "__main__":
    main()
