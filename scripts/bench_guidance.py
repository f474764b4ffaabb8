#!/usr/bin/env python
"""Cost of one classifier-guided denoiser call against one unguided call, on the tiny ADM of
``bench tiny-adm`` (or on any guided-diffusion model and classifier given by name or path).

One unguided call is one UNet forward (``ADMDenoiser.denoise``). One guided call adds the
classifier's forward and backward (``GuidedDenoiser``: ``D + s sigma^2 grad log p(y | x)``), so
the ratio says how much more a guided NFE costs; run.json counts the classifier calls apart.

    python scripts/bench_guidance.py                              # CPU, tiny ADM, batch 1,8,32
    python scripts/bench_guidance.py --device cuda --batch 8,64
    python scripts/bench_guidance.py --model adm-imagenet-128x128-cond \\
        --classifier adm-classifier-imagenet-128x128 --device cuda --batch 64
    python scripts/bench_guidance.py --random-config 128 --device cuda --batch 64   # no download:
        # the published 128x128 model + classifier architectures with random weights (same cost)

Columns: batch, ms per unguided call, ms per guided call, ratio, and the classifier part alone
(guided - unguided). Each figure is the median over ``--repeats`` timed calls after warm-up, at
sigma values spread over the model's range (a sampler visits all of them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench.models.guidance import GuidedDenoiser  # noqa: E402
from sampler_bench.models.registry import load_classifier, load_model, resolve_device  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, sigmas, repeats, device):
    times = []
    for i in range(repeats):
        s = sigmas[i % len(sigmas)]
        _sync(device)
        t0 = time.perf_counter()
        fn(s)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or path (default: a fresh bench tiny-adm model)")
    ap.add_argument("--classifier", default=None, help="classifier name or path (default: the tiny-adm classifier)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the table as JSON")
    ap.add_argument("--random-config", default=None, help="64, 128, 256 or 512: the published ImageNet model and "
                    "classifier architectures with random weights (no download)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tmp = None
    if args.random_config:
        from sampler_bench.models.adm_files import build_net, save_state_dict
        from sampler_bench.models.checkpoints import load_registry

        reg = load_registry(formats=("adm-pt",))
        r = args.random_config
        tmp = tempfile.TemporaryDirectory()
        specs = []
        for name, role in ((f"adm-imagenet-{r}x{r}-cond", "model"), (f"adm-classifier-imagenet-{r}x{r}", "classifier")):
            flags = reg[name].flags
            path = Path(tmp.name) / f"{role}.pt"
            save_state_dict(build_net(role, flags), path)
            kw = ",".join(f"{k}={str(v).replace(',', 'x')}" for k, v in flags.items())
            specs.append(f"{'adm' if role == 'model' else 'adm-classifier'}:path={path},{kw}")
        args.model, args.classifier = specs
    if args.model is None or args.classifier is None:
        from sampler_bench.models.adm_files import make_tiny, save_state_dict

        tmp = tempfile.TemporaryDirectory()
        save_state_dict(make_tiny("model"), Path(tmp.name) / "model.pt")
        save_state_dict(make_tiny("classifier"), Path(tmp.name) / "classifier.pt")
    model = load_model(args.model or str(Path(tmp.name) / "model.pt"), device)
    cls = load_classifier(args.classifier or str(Path(tmp.name) / "classifier.pt"), device, model)
    guided = GuidedDenoiser(model, cls, args.scale)
    sigmas = [torch.tensor(s, dtype=torch.float64, device=device)
              for s in torch.logspace(torch.log10(torch.tensor(model.sigma_min)), torch.log10(torch.tensor(model.sigma_max)), 7).tolist()]
    rows = []
    for b in [int(v) for v in args.batch.split(",")]:
        x = torch.randn((b, *model.image_shape), dtype=torch.float64, device=device)
        y = torch.randint(max(guided.num_classes, 1), (b,), device=device)
        with torch.inference_mode():
            for s in sigmas[:2]:
                model.denoise(x, s, y if model.num_classes else None)
            t_plain = time_calls(lambda s: model.denoise(x, s, y if model.num_classes else None), sigmas, args.repeats, device)
        for s in sigmas[:2]:
            guided.denoise(x, s, y)
        t_guided = time_calls(lambda s: guided.denoise(x, s, y), sigmas, args.repeats, device)
        rows.append({"batch": b, "unguided_ms": 1e3 * t_plain, "guided_ms": 1e3 * t_guided,
                     "ratio": t_guided / t_plain, "classifier_ms": 1e3 * (t_guided - t_plain)})
    dev = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
    print(f"model {model.name} ({model.describe().get('parameters', '?')} params), classifier {cls.name}, device {dev}, scale {args.scale}")
    print(f"{'batch':>6} {'unguided ms':>12} {'guided ms':>10} {'ratio':>6} {'classifier ms':>14}")
    for r in rows:
        print(f"{r['batch']:>6} {r['unguided_ms']:>12.2f} {r['guided_ms']:>10.2f} {r['ratio']:>6.2f} {r['classifier_ms']:>14.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
