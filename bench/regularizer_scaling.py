"""How each loss term's value and pull scale with the batch size N, at initialisation and after training.

    python -m bench.regularizer_scaling                      # the info-gap study's model and world
    python -m bench.regularizer_scaling --study search_spaces/gc.yaml --sizes 32 128 512 --steps 64

Why: a regularizer weight tuned at one batch size must mean the same strength at another (a study's
scale-up recipe changes the batch). The model is the study's base model; "trained" is after `--steps`
steps at the study's batch size (default: the study's own budget, epochs x train_size / batch) with
the CLIP loss, the in-modal terms and DFS at 0.5, so the DFS heads are trained too. The same 512
training pairs (with their augmented views) are then cut into batches of N, every term is computed
on each batch, and the mean over batches is printed. Two figures per term:

  value  the unweighted term, as a weight multiplies it;
  pull   ||d term / d features||_F / ||d L_clip / d features||_F on the same batch: the norm of the
         term's gradient on every feature tensor it reads (v, t, their views, the DFS heads' u, w and
         theirs) relative to the CLIP loss's, which is what a weight trades off in training.

Terms: L_clip (open_clip's ClipLoss); L_Con with in-modal terms on (1/2 (L_clip + 1/2 (L_V2V + L_T2T)));
L_GC + L^a_GC with normalization "paper" and "per_pair"; L_BB (s = 0.25); DFS's L_ortho, L_icon, L_uni.
With inmodal on, the contrastive term is L_Con: its L_clip part is halved, so every regularizer's
weight counts twice as much against it (the "relative to L_Con" lines).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor

from trainers.clip import ClipCollate, ClipTrainingModule
from trainers.config import RunConfig
from trainers.data import build_pretrain_dataset
from trainers.family import total_loss
from trainers.regularizers import brownian_bridge_loss, geometric_consistency_loss
from trainers.study_spec import load_study

NUM_PAIRS = 512
TRAINING_REGULARIZERS = {"gc": 0.0, "bb": 0.0, "dfs": 0.5, "align": 0.0, "inmodal": True}
FEATURES = ("v", "t", "v_aug", "t_aug", "u", "w", "u_aug", "w_aug")


def info_nce(x: Tensor, y: Tensor, temperature: Tensor) -> Tensor:
    logits = (x / temperature) @ y.T
    return F.cross_entropy(logits, torch.arange(x.shape[0]))


def uniformity(x: Tensor) -> Tensor:
    return torch.log(torch.exp(-2 * torch.cdist(x, x).square()).mean())


def terms(logit_scale: Tensor) -> dict[str, Callable[[dict[str, Tensor]], Tensor]]:
    clip_loss, temperature = ClipLoss(), 1 / logit_scale
    return {
        "L_clip": lambda f: clip_loss(f["v"], f["t"], logit_scale),
        "L_Con (inmodal on)": lambda f: (clip_loss(f["v"], f["t"], logit_scale)
                                         + (info_nce(f["v"], f["v_aug"], temperature)
                                            + info_nce(f["t"], f["t_aug"], temperature)) / 2) / 2,
        "L_GC paper": lambda f: geometric_consistency_loss(f["v"], f["t"], f["v_aug"], f["t_aug"]),
        "L_GC per_pair": lambda f: geometric_consistency_loss(f["v"], f["t"], f["v_aug"], f["t_aug"],
                                                              normalization="per_pair"),
        "L_BB": lambda f: brownian_bridge_loss(f["v"], f["t"], f["v_aug"], 0.25),
        "L_ortho": lambda f: ((f["v"] * f["u"]).sum(1).square() + (f["t"] * f["w"]).sum(1).square()).mean(),
        "L_icon": lambda f: info_nce(f["u"], f["u_aug"], temperature) + info_nce(f["w"], f["w_aug"], temperature),
        "L_uni": lambda f: uniformity(f["u"]) + uniformity(f["w"]),
    }


def pair_features(module: ClipTrainingModule, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    with torch.no_grad():
        image, text = module.encode_images(batch["image"]), module.encode_texts(batch["text"])
        image_aug, text_aug = module.encode_images(batch["image_aug"]), module.encode_texts(batch["text_aug"])
    kinds = (image["shared"], text["shared"], image_aug["shared"], text_aug["shared"], image["independent"],
             text["independent"], image_aug["independent"], text_aug["independent"])
    return dict(zip(FEATURES, (x.double() for x in kinds), strict=True))


def measure(features: dict[str, Tensor], logit_scale: Tensor, sizes: list[int]) -> dict[str, dict[int, tuple]]:
    """{term: {N: (mean value, mean pull)}} over the disjoint batches of N among the pairs."""
    figures: dict[str, dict[int, tuple]] = {name: {} for name in terms(logit_scale)}
    for n in sizes:
        sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in figures}
        batches = len(features["v"]) // n
        for b in range(batches):
            batch = {k: x[b * n:(b + 1) * n].clone().requires_grad_() for k, x in features.items()}
            grads = {}
            for name, term in terms(logit_scale.double()).items():
                value = term(batch)
                parts = torch.autograd.grad(value, list(batch.values()), allow_unused=True)
                grads[name] = sum(float(g.square().sum()) for g in parts if g is not None) ** 0.5
                sums[name][0] += float(value.detach())
            for name in figures:
                sums[name][1] += float(grads[name] / grads["L_clip"])
        for name in figures:
            figures[name][n] = (sums[name][0] / batches, sums[name][1] / batches)
    return figures


def print_figures(title: str, figures: dict[str, dict[int, tuple]], sizes: list[int]) -> None:
    print(f"\n{title}")
    header = "".join(f"{f'N={n} value':>14}{'pull':>9}" for n in sizes)
    print(f"{'term':<20}{header}   value at N={sizes[-1]} / N={sizes[0]}")
    for name, by_size in figures.items():
        cells = "".join(f"{by_size[n][0]:>14.4f}{by_size[n][1]:>9.3f}" for n in sizes)
        growth = by_size[sizes[-1]][0] / by_size[sizes[0]][0] if by_size[sizes[0]][0] else float("nan")
        print(f"{name:<20}{cells}{growth:>12.2f}")


def train(module: ClipTrainingModule, cfg: RunConfig, steps: int) -> None:
    dataset = build_pretrain_dataset(cfg.data, "train", augment=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                                         collate_fn=ClipCollate(cfg), drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    module.train()
    done = 0
    while done < steps:
        for batch in loader:
            losses, _ = module(batch)
            optimizer.zero_grad(set_to_none=True)
            total_loss(losses).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            done += 1
            if done == steps:
                break
    module.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.regularizer_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="search_spaces/info_gap.yaml", help="study whose base model and data to use")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the study's own budget)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if max(args.sizes) > NUM_PAIRS or any(NUM_PAIRS % n for n in args.sizes):
        parser.error(f"--sizes: each must divide {NUM_PAIRS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = load_study(args.study)
    tree = spec.base.model_dump()
    tree["regularizers"] = {**tree["regularizers"], **TRAINING_REGULARIZERS}
    tree["data"]["train_size"] = max(tree["data"]["train_size"], NUM_PAIRS)
    cfg = RunConfig.model_validate(tree)
    steps = args.steps or cfg.train.epochs * (cfg.data.train_size // cfg.train.batch_size)
    module = ClipTrainingModule(cfg).eval()
    dataset = build_pretrain_dataset(cfg.data, "train", augment=True)
    pairs = ClipCollate(cfg)([dataset[i] for i in range(NUM_PAIRS)])
    print(f"{args.study}: {cfg.model.arch}, {NUM_PAIRS} training pairs with views, batches of {args.sizes}; "
          f"trained {steps} steps at batch {cfg.train.batch_size} (CLIP + in-modal + DFS 0.5)")

    for stage in ("initialisation", "trained"):
        if stage == "trained":
            started = time.perf_counter()
            train(module, cfg, steps)
            print(f"\n(trained in {time.perf_counter() - started:.0f} s)")
        logit_scale = module.model.logit_scale.exp().detach()
        figures = measure(pair_features(module, pairs), logit_scale, args.sizes)
        print_figures(f"{stage} (logit scale {float(logit_scale):.1f}): mean over batches of N; pull = "
                      "gradient norm on the features / L_clip's", figures, args.sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
