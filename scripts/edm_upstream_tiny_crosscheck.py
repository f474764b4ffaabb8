"""Cross-check our EDM loading and sampling against NVlabs' own code, on tiny networks.

Not part of the test suite: EDM's code (CC BY-NC-SA) is not shipped. Given a checkout of
https://github.com/NVlabs/edm (checked at 008a4e5), this builds tiny networks of every
preconditioner and architecture with our code, writes them in EDM's pickle format with our writer,
loads the same weights into EDM's ``training/networks.py`` classes (imported from the checkout with
three empty shim modules for ``torch_utils``), and runs EDM's ``edm_sampler`` (its source is read from
the checkout's ``generate.py``) against our sampling loop (``bench``'s ``generate``) on the same
seeds, latents and labels. It prints the largest |difference| of the final float64 states, at the
same batch size (expected: 0) and with our batch size 1 (float32 kernels may round differently),
and how many of a dense sigma grid iDDPM's round_sigma maps differently (expected: only sigmas below
u[M-1]/2, which we never round to 0).

    python scripts/edm_upstream_tiny_crosscheck.py /path/to/edm
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch


def upstream(edm_dir: Path):
    shims = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
             "torch_utils.misc": types.ModuleType("torch_utils.misc")}
    shims["torch_utils.persistence"].persistent_class = lambda cls: cls
    shims["torch_utils"].persistence = shims["torch_utils.persistence"]
    shims["torch_utils"].misc = shims["torch_utils.misc"]
    sys.modules.update(shims)
    nets = types.ModuleType("edm_networks")
    exec(compile((edm_dir / "training" / "networks.py").read_text(), "edm/training/networks.py", "exec"), nets.__dict__)
    src = (edm_dir / "generate.py").read_text()
    m = re.search(r"def edm_sampler\(.*?return x_next\n", src, re.S)
    ns = {"torch": torch, "np": np}
    exec(compile(m.group(0), "edm/generate.py", "exec"), ns)
    return nets, ns["edm_sampler"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("edm", type=Path, help="an NVlabs/edm checkout")
    args = ap.parse_args()
    from sampler_bench.models import edm
    from sampler_bench.sampling import RunConfig, generate, plan_run

    up, edm_sampler = upstream(args.edm)
    worst = 0.0
    cases = [("vp", "ddpmpp", 0), ("vp", "ddpmpp", 10), ("edm", "adm", 0), ("edm", "adm", 5), ("iddpm", "adm", 0),
             ("ve", "ncsnpp", 0), ("edm", "songunet-skip", 3)]
    for pre, arch, classes in cases:
        ours = edm.make_tiny_network(pre, arch, label_dim=classes, resolution=16)
        ref = up.__dict__[type(ours).__name__](**ours._init_kwargs).eval()
        ref.load_state_dict(ours.state_dict())
        with tempfile.TemporaryDirectory() as d:
            den = edm.load_edm_denoiser(edm.save_edm_pickle(ours, Path(d) / "n.pkl"))
        if pre == "iddpm":
            s = torch.linspace(0.002, 80, 200_001, dtype=torch.float64)
            diff = ref.round_sigma(s) != den.round_sigma(s)
            print(f"iddpm round_sigma: {int(diff.sum())} of {len(s)} differ, all below u[M-1]/2: "
                  f"{bool((s[diff] < float(ref.u[ref.M - 1]) / 2).all())}")
        for steps in ([18, 39, 61, 70] if pre == "iddpm" else [18]):
            seeds = list(range(6))
            gens = [torch.Generator().manual_seed(sd) for sd in seeds]
            lat = torch.stack([torch.randn(den.image_shape, generator=g) for g in gens])
            lab = torch.eye(classes)[torch.stack([torch.randint(classes, (), generator=g) for g in gens])] if classes else None
            with torch.no_grad():
                x_ref = edm_sampler(ref, lat, lab, num_steps=steps)
            for batch in (len(seeds), 1):
                cfg = RunConfig(model="tiny", solver="heun", nfe=2 * steps - 1, seeds=seeds, batch=batch, device="cpu")
                x = torch.cat([b.x for b, _ in generate(plan_run(cfg, den), seeds)])
                d = float((x - x_ref).abs().max())
                if batch == len(seeds):
                    worst = max(worst, d)
                print(f"{type(ours).__name__:13s} {arch:14s} classes {classes:2d} steps {steps:2d} batch {batch}: max|x - x_edm| = {d:.3g}")
    print("same batch size: bit-exact" if worst == 0 else f"same batch size: NOT bit-exact (max {worst:.3g})")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
