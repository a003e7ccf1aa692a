"""Samples/s of ALBEF's pre-training step (forward + backward + AdamW + momentum update), with and
without the paper's three regularizers (GC, BB, DFS at weight 1), and their ratio.

    python bench/albef_step.py            # CPU, tiny config; plus CUDA (ViT-B/16 + BERT-base 6+6,
                                          # batch 64, bf16 autocast) when a GPU is present
    python bench/albef_step.py --steps 20 --devices cpu --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainers.albef.mlm import SpecialTokens
from trainers.albef.pretrain import AlbefPretraining
from trainers.config import RunConfig
from trainers.family import total_loss

REGULARIZERS_ON = {"gc": 1.0, "bb": 1.0, "dfs": 1.0}
REGULARIZERS_OFF = {"gc": 0.0, "bb": 0.0, "dfs": 0.0}


@dataclass(frozen=True)
class BenchSetting:
    name: str
    model: dict
    image_size: int
    batch_size: int
    vocab_size: int
    text_length: int
    bf16: bool


TINY_CPU = BenchSetting(
    name="tiny (hidden 64, ViT 2, text 2 + fusion 2)",
    model=dict(
        family="albef",
        hidden_size=64,
        num_heads=4,
        patch_size=8,
        vision_layers=2,
        text_layers=2,
        fusion_layers=2,
        embed_dim=64,
        queue_size=1024,
    ),
    image_size=64,
    batch_size=32,
    vocab_size=1000,
    text_length=24,
    bf16=False,
)
BASE_CUDA = BenchSetting(
    name="ViT-B/16 + BERT-base 6+6",
    model=dict(
        family="albef",
        hidden_size=768,
        num_heads=12,
        patch_size=16,
        vision_layers=12,
        text_layers=6,
        fusion_layers=6,
        embed_dim=256,
        queue_size=65536,
    ),
    image_size=224,
    batch_size=64,
    vocab_size=30522,
    text_length=30,
    bf16=True,
)


def random_batch(setting: BenchSetting, device: torch.device) -> dict[str, torch.Tensor]:
    size, length = setting.batch_size, setting.text_length
    input_ids = torch.randint(3, setting.vocab_size, (size, length), device=device)
    input_ids[:, 0] = 1  # [CLS]
    return {
        "image": torch.randn(size, 3, setting.image_size, setting.image_size, device=device),
        "input_ids": input_ids,
        "attention_mask": torch.ones(size, length, dtype=torch.long, device=device),
    }


def training_step(setting: BenchSetting, regularizers: dict, device: torch.device) -> Callable[[], None]:
    """One pre-training step (forward, backward, AdamW, momentum update) on a fixed random batch."""
    torch.manual_seed(0)
    cfg = RunConfig.model_validate(
        {"model": setting.model, "data": {"image_size": setting.image_size}, "regularizers": regularizers}
    )
    tokens = SpecialTokens(pad_id=0, cls_id=1, mask_id=2, vocab_size=setting.vocab_size)
    module = AlbefPretraining(cfg, tokens).to(device).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    batch = random_batch(setting, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if setting.bf16 else nullcontext()

    def step() -> None:
        with autocast:
            losses, _ = module(batch)
        total_loss(losses).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.after_optimizer_step()

    return step


def best_samples_per_second(
    setting: BenchSetting, device: torch.device, steps: int, rounds: int
) -> tuple[float, float]:
    """(plain, with regularizers) samples/s: the best of `rounds` timed blocks each, the two
    alternating so that load from other processes hits both alike."""
    steps_fns = [training_step(setting, weights, device) for weights in (REGULARIZERS_OFF, REGULARIZERS_ON)]
    for step in steps_fns:  # warm-up: allocator, kernels
        for _ in range(2):
            step()
    best = [0.0, 0.0]
    for _ in range(rounds):
        for slot, step in enumerate(steps_fns):
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(steps):
                step()
            _synchronize(device)
            best[slot] = max(best[slot], steps * setting.batch_size / (time.perf_counter() - started))
    return best[0], best[1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="timed blocks per configuration (best kept)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for device_name in args.devices:
        if device_name == "cuda" and not torch.cuda.is_available():
            continue
        setting = TINY_CPU if device_name == "cpu" else BASE_CUDA
        device = torch.device(device_name)
        without, with_all = best_samples_per_second(setting, device, args.steps, args.rounds)
        rows.append((device_name, setting.name, setting.batch_size, without, with_all))
    print(f"{'device':<7} {'model':<44} {'batch':>5} {'plain/s':>10} {'+GC+BB+DFS/s':>13} {'ratio':>6}")
    for device_name, name, batch, without, with_all in rows:
        print(f"{device_name:<7} {name:<44} {batch:>5} {without:>10.1f} {with_all:>13.1f} {with_all / without:>6.3f}")


if __name__ == "__main__":
    main()
