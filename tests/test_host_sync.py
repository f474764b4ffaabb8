"""No host synchronisation per step: every solver, on CPU, with a counter of device -> host reads.

On CUDA a host read of a device tensor (``float(t)``, ``bool(t)``, ``t.item()``, ``if t > 0:``,
``t.tolist()``, ``t.cpu()``) or a blocking host -> device copy (``torch.tensor(v, device=...)``,
``table.to(x.device)`` of a CPU table) stalls the GPU pipeline. Inside the per-step loop that
happens once per step; the loop must make none. No GPU is needed to check it: :class:`HostSyncCounter`
runs a solver on CPU under a ``TorchFunctionMode`` and a ``TorchDispatchMode`` and records

- **reads**: ``aten._local_scalar_dense`` (what ``float/int/bool/item`` and a tensor in an ``if``
  dispatch), ``aten.is_nonzero``, ``aten.equal``, and the Python-level ``Tensor.tolist``,
  ``Tensor.numpy``, ``Tensor.cpu`` and ``Tensor.item`` (``tolist``/``numpy``/``cpu`` reach no aten op
  on CPU, so only the function mode sees them);
- **uploads**: ``aten.lift_fresh`` (Python data made into a tensor: ``torch.tensor(...)``,
  ``torch.as_tensor(float, device=...)``, a blocking pageable copy on CUDA) and a ``Tensor.to``,
  ``Tensor.cuda`` or ``torch.as_tensor`` with a device argument applied to a *host* tensor (one that
  is not device-resident, below).

Which tensors are "on the device" is not visible on CPU, so the counter tracks it: the state ``x``,
the schedule ``sigmas``, the labels, the noise source's seeds and every tensor of the model (network
parameters and buffers, the analytic mixture's tables; time maps' tables stay host tables) are
marked device-resident, and so is every tensor made by an op once the first denoiser call has begun
(``BoundDenoiser.calls`` dates each event: 0 = before the loop, >= 1 = in the loop). Before the
loop a read counts only on a device-resident tensor (host-side coefficient math on CPU tensors is
free on a GPU too); in the loop every read counts.

The check (:func:`_check`): from the second denoiser call on ("per step") there is no read and no
upload at all, and the whole run (setup, the first call's one-off work such as checking a fresh
labels tensor, and the steps) makes as many at 2N steps as at N, at most 4 reads: run_solver's test
of the last sigma, the solver's one ``sigmas.tolist()`` and a model's labels check (the analytic
model's range check; ``one_hot`` in the EDM adapter reads min and max on CPU only). Each case runs
once before it is counted, so per-device caches are warm as they are from a run's second batch on.

Not caught: a ``Tensor.to(device)`` of a device-resident tensor (a no-op on the same device, a
device -> device copy otherwise; on CPU ``.to("cpu")`` and ``.to(x.device)`` look the same), a
read of a tensor made by a factory with an explicit device before the loop, and reads inside C++
code that never reaches the dispatcher. The negative controls below prove the counter sees the
patterns it is meant to catch.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from sampler_bench.models.analytic import GaussianMixture
from sampler_bench.models.base import F64, BoundDenoiser, Denoiser, LinearVP, VPTimeMap
from sampler_bench.noise import PhiloxNoise
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import SolverSpec, all_solvers, parse_opts, run_solver

aten = torch.ops.aten
READ_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
READ_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.item}
MOVE_METHODS = {torch.Tensor.to, torch.Tensor.cuda, torch.as_tensor}
UPLOAD_OPS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}


def _has_device_arg(func, args, kwargs) -> bool:
    if func is torch.Tensor.cuda:
        return True
    vals = list(args[1:]) + [kwargs.get("device")]
    return any(isinstance(v, (torch.device, str)) for v in vals if v is not None)


class HostSyncCounter:
    """Counts host reads and host -> device uploads of one solver run (see the module docstring)."""

    def __init__(self, bound: BoundDenoiser):
        self.bound = bound
        self.device = WeakTensorKeyDictionary()
        self.events: list[tuple[int, str, str]] = []  # (denoiser calls so far, "read"/"upload", what)

    def mark(self, *objs) -> "HostSyncCounter":
        """Mark tensors (and every tensor of models, modules and containers) device-resident."""
        seen: set[int] = set()

        def walk(o):
            if id(o) in seen or o is None or isinstance(o, VPTimeMap):
                return
            seen.add(id(o))
            if isinstance(o, torch.Tensor):
                self.device[o] = True
            elif isinstance(o, torch.nn.Module):
                for t in list(o.parameters()) + list(o.buffers()):
                    self.device[t] = True
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)
            elif isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif hasattr(o, "__dict__") and not isinstance(o, type):
                for v in vars(o).values():
                    walk(v)

        for o in objs:
            walk(o)
        return self

    @property
    def in_loop(self) -> bool:
        return self.bound.calls >= 1

    def on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.device

    def record(self, kind: str, what) -> None:
        self.events.append((self.bound.calls, kind, str(getattr(what, "__name__", what))))

    def count(self, kind: str, per_step: bool | None = None) -> int:
        """Events of ``kind``; ``per_step`` True: from the second denoiser call on (the step loop proper),
        False: before it (setup, and the first call's one-off work such as a labels check)."""
        return sum(1 for calls, k, _ in self.events if k == kind and (per_step is None or (calls >= 2) == per_step))

    def summary(self) -> Counter:
        phase = lambda c: "per step" if c >= 2 else "first call" if c == 1 else "setup"  # noqa: E731
        return Counter((phase(c), k, w) for c, k, w in self.events)

    def __enter__(self):
        counter = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in READ_METHODS and (counter.in_loop or counter.on_device(args[0])):
                    counter.record("read", func)
                elif (func in MOVE_METHODS and args and isinstance(args[0], torch.Tensor)
                      and not counter.on_device(args[0]) and _has_device_arg(func, args, kwargs)):
                    counter.record("upload", func)
                return func(*args, **kwargs)

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
                dev_in = any(t in counter.device for t in inputs)
                if func in READ_OPS and (counter.in_loop or dev_in):
                    counter.record("read", func)
                if func in UPLOAD_OPS and counter.in_loop:
                    counter.record("upload", func)
                out = func(*args, **kwargs)
                if (dev_in or counter.in_loop) and func not in UPLOAD_OPS:
                    for t in tree_flatten(out)[0]:
                        if isinstance(t, torch.Tensor):
                            counter.device[t] = True
                return out

        self._modes = [Functions(), Ops()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class ShrinkDenoiser(Denoiser):
    """Tensor-only: the exact denoiser of N(0, I) data, D = x / (1 + sigma^2)."""

    name = "shrink"
    image_shape = (1, 4, 4)
    sigma_min, sigma_max = 0.002, 80.0
    time_map = LinearVP()

    def denoise(self, x, sigma, labels=None):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
        return x / (1 + s**2)


SEEDS = (3, 11)


def _run(spec, model, steps, labels=None, opts=None):
    """One counted run of ``spec`` for ``steps`` steps: (counter, output)."""
    opts = parse_opts(spec, opts or {})
    sig = make_schedule(spec.schedule_for(model), steps, model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(SEEDS), *model.image_shape, generator=g, dtype=F64) * sig[0]
    noise = PhiloxNoise(SEEDS, x.shape[1:], x.device)
    labels = None if labels is None else labels.clone()  # a fresh labels tensor per batch, as sampling.py draws them
    bound = BoundDenoiser(model, labels)
    counter = HostSyncCounter(bound).mark(x, sig, labels, noise.seeds, model)
    with counter:
        out = run_solver(spec, bound, x, sig, noise=noise, opts=opts)
    return counter, out


def _check(spec, model, steps=(3, 6), labels=None, opts=None):
    _run(spec, model, steps[0], labels, opts)  # warm-up: per-device caches, per-batch memory checks
    counts = []
    for n in steps:
        c, out = _run(spec, model, max(n, spec.min_steps), labels, opts)
        assert torch.isfinite(out).all()
        assert c.count("read", per_step=True) == 0 and c.count("upload", per_step=True) == 0, (spec.name, n, c.summary())
        counts.append((c.count("read"), c.count("upload"), c.summary()))
    assert counts[0][:2] == counts[1][:2], (spec.name, counts)  # the one-off reads do not grow with the steps either
    # run_solver's check of the last sigma, the solver's one tolist(), a model's labels check (analytic: 1;
    # EDM's one_hot reads the labels' min and max on CPU, not on CUDA: 2)
    assert counts[0][0] <= 4, (spec.name, counts)


SOLVERS = sorted(all_solvers(), key=lambda s: s.name)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(shape=(1, 4, 4), num_classes=2, per_class=2, rank=2)


@pytest.mark.parametrize("spec", SOLVERS, ids=lambda s: s.name)
def test_no_host_sync_per_step_tensor_denoiser(spec):
    _check(spec, ShrinkDenoiser())


@pytest.mark.parametrize("spec", SOLVERS, ids=lambda s: s.name)
def test_no_host_sync_per_step_analytic(spec, mixture):
    _check(spec, mixture, labels=torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------
# Real network adapters (tiny EDM / ADM networks, classifier guidance) on a representative subset
# ---------------------------------------------------------------------------------------------

# deterministic and stochastic, tensor sigmas and host-float sigmas, round_sigma (edm), time maps (deis)
SUBSET = ("heun", "edm", "deis", "dpmpp-2m", "euler-ancestral", "ersde", "unipc")
EDM_SUBSET = {"edm-ddpmpp": SUBSET,  # class-conditional: one-hot labels
              "vp": ("heun", "deis", "dpmpp-2m"),  # native time map
              "iddpm": ("edm", "deis", "unipc")}  # discrete grid: round_sigma, IDDPMGridTime


def _spec(name):
    return next(s for s in SOLVERS if s.name == name)


@pytest.fixture(scope="module")
def edm_models():
    from sampler_bench.models.edm import EDMDenoiser, make_tiny_network

    return {"edm-ddpmpp": EDMDenoiser(make_tiny_network("edm", "ddpmpp", resolution=4, label_dim=3)),
            "vp": EDMDenoiser(make_tiny_network("vp", "ddpmpp", resolution=4)),  # native time map (deis)
            "iddpm": EDMDenoiser(make_tiny_network("iddpm", "adm", resolution=4))}  # discrete grid, round_sigma


@pytest.mark.parametrize("kind,name", [(k, n) for k in ("edm-ddpmpp", "vp", "iddpm") for n in SUBSET
                                       if n in EDM_SUBSET[k]])
def test_no_host_sync_per_step_edm_nets(edm_models, kind, name):
    model = edm_models[kind]
    if name == "deis" and model.time_map is None:
        name = "deis-rhoab3"  # tAB-DEIS needs a native time map
    _check(_spec(name), model, labels=torch.tensor([2, 0]) if model.num_classes else None)


@pytest.fixture(scope="module")
def adm_models():
    from sampler_bench.models import adm
    from sampler_bench.models.adm_files import TINY_CLASSIFIER_FLAGS, TINY_MODEL_FLAGS
    from sampler_bench.models.guidance import ExactMixtureClassifier, GuidedDenoiser

    base = adm.ADMDenoiser(adm.make_tiny("model", seed=1), TINY_MODEL_FLAGS, time_mode="nearest")
    cls = adm.ADMClassifier(adm.make_tiny("classifier", seed=2), TINY_CLASSIFIER_FLAGS, time_mode="nearest")
    gmm = GaussianMixture(shape=(1, 4, 4), num_classes=2, per_class=2, rank=2)
    return {"adm": base,
            "adm+classifier": GuidedDenoiser(base, cls, 2.0),
            "gmm+exact-classifier": GuidedDenoiser(gmm, ExactMixtureClassifier(gmm), 1.5)}


@pytest.mark.parametrize("name", ["edm", "deis", "dpmpp-2m"])
@pytest.mark.parametrize("kind", ["adm", "adm+classifier", "gmm+exact-classifier"])
def test_no_host_sync_per_step_adm_and_guidance(adm_models, kind, name):
    _check(_spec(name), adm_models[kind], steps=(2, 4), labels=torch.tensor([7, 1]) if "gmm" not in kind else torch.tensor([1, 0]))


# ---------------------------------------------------------------------------------------------
# Negative controls: the counter sees what it must catch
# ---------------------------------------------------------------------------------------------


HOST_TABLE = torch.linspace(0.0, 1.0, 5, dtype=F64)  # made before any run: a host-side table


def _euler_with(step_hook):
    def solver(denoise, x, sigmas, *, noise=None):
        for i in range(len(sigmas) - 1):
            step_hook(sigmas, i)
            d = (x - denoise(x, sigmas[i])) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    return SolverSpec(name="euler-control", fn=solver, family="test", summary="", nfe=lambda steps, opts: steps,
                      nfe_rule="steps")


@pytest.mark.parametrize("hook,kind", [
    (lambda sig, i: float(sig[i]), "read"),  # float(sigma) per step
    (lambda sig, i: bool(sig[i + 1] > 0), "read"),  # if sigma_next > 0: on a device tensor
    (lambda sig, i: sig.tolist(), "read"),  # tolist reaches no aten op on CPU: seen by the function mode
    (lambda sig, i: sig[i].item(), "read"),
    (lambda sig, i: torch.tensor(0.5, dtype=F64, device=sig.device), "upload"),  # Python data to the device
    (lambda sig, i: HOST_TABLE.to(sig.device), "upload"),  # a host table copied per step (DiscreteVP did)
], ids=["float", "bool", "tolist", "item", "tensor", "to-device"])
def test_counter_catches_per_step_syncs(hook, kind):
    spec = _euler_with(hook)
    with pytest.raises(AssertionError):
        _check(spec, ShrinkDenoiser())
    counts = [_run(spec, ShrinkDenoiser(), n)[0].count(kind, per_step=True) for n in (4, 8)]
    assert counts[0] >= 2 and counts[1] >= counts[0] + 4, counts  # at least once per step


def test_counter_catches_a_model_that_reads_its_sigma():
    class Reading(ShrinkDenoiser):
        def denoise(self, x, sigma, labels=None):
            if float(sigma) > 1:  # a host decision on the device sigma, once per call
                return x / (1 + sigma**2)
            return super().denoise(x, sigma)

    with pytest.raises(AssertionError):
        _check(_spec("heun"), Reading())
    c, _ = _run(_spec("heun"), Reading(), 4)
    assert c.count("read", per_step=True) == 6  # one per denoiser call from the second on: NFE = 2 * 4 - 1


# ---------------------------------------------------------------------------------------------
# On a GPU: CUDA's own synchronisation detector agrees (skipped where there is no CUDA)
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("name", ["heun", "edm", "ddim", "deis", "dpmpp-2m", "euler-ancestral", "ersde", "unipc"])
def test_cuda_sync_debug_mode_counts_do_not_grow_with_steps(name):
    """``torch.cuda.set_sync_debug_mode("warn")`` warns on every synchronising CUDA call (D2H copies,
    ``item``, blocking H2D copies, stream syncs): a run at 2N steps must warn as often as one at N."""
    import warnings

    spec = _spec(name)
    model = GaussianMixture(shape=(1, 4, 4), num_classes=2, per_class=2, rank=2).to("cuda")
    counts = []
    for steps in (3, 3, 6):  # the first run warms the per-device caches
        sig = make_schedule(spec.schedule_for(model), steps, model).to("cuda")
        x = torch.randn(len(SEEDS), *model.image_shape, dtype=F64, device="cuda") * sig[0]
        noise = PhiloxNoise(SEEDS, x.shape[1:], x.device)
        bound = BoundDenoiser(model, torch.tensor([1, 0], device="cuda"))
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_solver(spec, bound, x, sig, noise=noise, opts=parse_opts(spec, {}))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[1] == counts[2], (name, counts)
