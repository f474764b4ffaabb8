#!/usr/bin/env python
"""Sampling throughput: our `bench sample` loop against an EDM-generate-style loop, same network, same seeds.

The reference loop is written by us from the EDM paper's Algorithm 2 (Karras et al. 2022), the way
EDM's ``generate.py`` runs it: per-sample generators (``StackedRandomGenerator``) for the latents and
for the churn noise ``randn_like`` drawn at every step (also when ``S_churn = 0``), float64 state,
the network called in float32 (its own fp16 path on CUDA when the network says ``use_fp16``), Heun
correction on every step but the last. With ``S_churn = 0`` (EDM's CIFAR-10 setting) it is our
``heun`` solver on the ``karras`` schedule, so both produce the same uint8 images (checked).

Reported per NFE: images/s of each loop, the ratio, and the share of wall time spent in the network
(``NFE x`` one batched forward timed alone, divided by the loop's wall time). The network has
random weights (nothing is downloaded): ``--size tiny`` (3.5M parameters), ``cifar`` (DDPM++
CIFAR-10 size, 56M), at ``--batch``. Goal on a GPU: ours >= 1.5x EDM's loop at NFE 10-35 with batch
512 on the cifar network and >= 95% of its wall time in the network. On CPU it runs and reports.

    python scripts/bench_throughput.py --size tiny --batch 16 --nfe 11,35             # CPU
    python scripts/bench_throughput.py --device cuda --size cifar --batch 512 --nfe 11,19,35 \\
        --noise philox --precision fp16 --compile
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench.images import quantize  # noqa: E402
from sampler_bench.models.edm import EDMDenoiser  # noqa: E402
from sampler_bench.models.nets import edm as nets  # noqa: E402
from sampler_bench.sampling import RunConfig, generate, plan_run  # noqa: E402
from sampler_bench.accel import network_options  # noqa: E402

ARCH = dict(img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="positional", encoder_type="standard",
            decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
SIZES = {"tiny": dict(img_resolution=32, model_channels=32, channel_mult=[1, 2, 2], **ARCH),
         "cifar": dict(img_resolution=32, model_channels=128, channel_mult=[2, 2, 2], **ARCH)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def edm_generate_loop(net, seeds, device, num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                      S_churn=0.0, S_min=0.0, S_max=float("inf"), S_noise=1.0):
    """EDM Algorithm 2 as generate.py runs it (written by us from the paper)."""
    gens = [torch.Generator(device).manual_seed(int(s) % (1 << 32)) for s in seeds]
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    randn_like = lambda x: torch.stack([torch.randn(x.shape[1:], generator=g, device=device, dtype=x.dtype) for g in gens])  # noqa: E731
    latents = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros_like(t[:1])])  # round_sigma is the identity for VP/VE/EDM preconditioners

    def D(x, s):  # a 0-d sigma, as edm_sampler passes it (the preconditioner casts and reshapes it)
        return net(x, s).to(torch.float64)

    x_next = latents.to(torch.float64) * t[0]
    for k, (t_cur, t_next) in enumerate(zip(t[:-1], t[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)
        d_cur = (x_hat - D(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if k < num_steps - 1:
            d_prime = (x_next - D(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def forward_seconds(net, batch, device, reps=3):
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
    s = torch.full((batch,), 1.0, device=device)
    with torch.no_grad():
        net(x, s)
        best = float("inf")
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            net(x, s)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=1, help="batches per measurement")
    ap.add_argument("--nfe", default="11,35", help="comma-separated odd NFE values (Heun: 2 steps - 1)")
    ap.add_argument("--noise", default="edm-generate", choices=["edm-generate", "philox"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = nets.VPPrecond(**SIZES[args.size]).eval().requires_grad_(False)
    with torch.no_grad():  # EDM zero-initialises output layers: give them values so images are not constant
        for p in net.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
    net.to(device)
    model = EDMDenoiser(net, name=f"random-{args.size}", device=device)
    seeds = list(range(args.batch * args.batches))
    fwd = forward_seconds(net, args.batch, device)
    print(f"# {args.size}: {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x {args.batches}; ours: noise {args.noise}, precision {args.precision}, compile {args.compile}")
    print(f"# one batched forward alone: {fwd * 1e3:.1f} ms")
    print("| NFE | EDM loop img/s | ours img/s | ours / EDM | network share EDM | network share ours | same uint8 images |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for nfe in (int(v) for v in args.nfe.split(",")):
        steps = (nfe + 1) // 2
        cfg = RunConfig(model="random", solver="heun", nfe=nfe, seeds=seeds, batch=args.batch, schedule="karras",
                        device=str(device), metrics=["none"], noise=args.noise, precision=args.precision, compile=args.compile)
        plan = plan_run(cfg, model)
        with network_options(model, device, compile=args.compile, precision=args.precision):
            for _ in generate(plan, seeds[: args.batch]):  # warm-up (and compilation)
                pass
            sync(device)
            t0 = time.perf_counter()
            ours = [b.images for b, _ in generate(plan, seeds)]
            sync(device)
            t_ours = time.perf_counter() - t0
        with torch.no_grad():
            edm_generate_loop(net, seeds[: args.batch], device, steps)
            sync(device)
            t0 = time.perf_counter()
            ref = [quantize(edm_generate_loop(net, seeds[i: i + args.batch], device, steps)).cpu()
                   for i in range(0, len(seeds), args.batch)]
            sync(device)
            t_ref = time.perf_counter() - t0
        same = bool(all(torch.equal(a, b) for a, b in zip(ours, ref)))
        n = len(seeds)
        row = {"nfe": nfe, "edm_img_s": n / t_ref, "ours_img_s": n / t_ours, "ratio": t_ref / t_ours,
               "net_share_edm": nfe * args.batches * fwd / t_ref, "net_share_ours": nfe * args.batches * fwd / t_ours,
               "same_images": same}
        rows.append(row)
        print(f"| {nfe} | {row['edm_img_s']:.2f} | {row['ours_img_s']:.2f} | {row['ratio']:.2f} | {row['net_share_edm']:.0%} | "
              f"{row['net_share_ours']:.0%} | {'yes' if same else 'no (other noise stream or precision)'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "forward_s": fwd, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
