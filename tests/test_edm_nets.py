"""Our EDM networks: parameter counts at the published configurations (built on the meta device),
preconditioner constants, the iDDPM grid, and the denoiser adapter."""

import math

import pytest
import torch

from sampler_bench.models.base import DiscreteVP, as_f64
from sampler_bench.models.edm import EDMDenoiser, IDDPMGridTime, make_tiny_network
from sampler_bench.models.nets import edm as nets

DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4])

# research/checkpoints.md section 2.2: (constructor kwargs as train.py builds them, trainable parameters)
PUBLISHED = {
    "edm-cifar10-32x32-cond-vp": (dict(img_resolution=32, label_dim=10, augment_dim=9, dropout=0.13, **DDPMPP), 55_735_299),
    "edm-cifar10-32x32-cond-ve": (dict(img_resolution=32, label_dim=10, augment_dim=9, dropout=0.13, **NCSNPP), 56_400_643),
    "edm-cifar10-32x32-uncond-vp": (dict(img_resolution=32, label_dim=0, augment_dim=9, dropout=0.13, **DDPMPP), 55_733_891),
    "edm-cifar10-32x32-uncond-ve": (dict(img_resolution=32, label_dim=0, augment_dim=9, dropout=0.13, **NCSNPP), 56_397_827),
    "edm-ffhq-64x64-uncond-vp": (dict(img_resolution=64, augment_dim=9, dropout=0.05, **{**DDPMPP, "channel_mult": [1, 2, 2, 2]}), 61_805_571),
    "edm-ffhq-64x64-uncond-ve": (dict(img_resolution=64, augment_dim=9, dropout=0.05, **{**NCSNPP, "channel_mult": [1, 2, 2, 2]}), 62_761_091),
    "edm-afhqv2-64x64-uncond-vp": (dict(img_resolution=64, augment_dim=9, dropout=0.25, **{**DDPMPP, "channel_mult": [1, 2, 2, 2]}), 61_805_571),
    "edm-imagenet-64x64-cond-adm": (dict(img_resolution=64, label_dim=1000, use_fp16=True, dropout=0.1, **ADM), 295_899_267),
}

# state-dict entries (parameters + buffers) of the same configurations, checked against NVlabs' classes
STATE_DICT_ENTRIES = {
    "edm-cifar10-32x32-cond-vp": 427, "edm-cifar10-32x32-cond-ve": 434, "edm-cifar10-32x32-uncond-vp": 425,
    "edm-cifar10-32x32-uncond-ve": 432, "edm-ffhq-64x64-uncond-vp": 553, "edm-ffhq-64x64-uncond-ve": 563,
    "edm-afhqv2-64x64-uncond-vp": 553, "edm-imagenet-64x64-cond-adm": 553,
}


def meta_net(cls, **kw):
    with torch.device("meta"), nets.skip_init():
        return cls(img_channels=3, **kw)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_configs(name):
    kw, expected = PUBLISHED[name]
    net = meta_net(nets.EDMPrecond, **kw)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert len(net.state_dict()) == STATE_DICT_ENTRIES[name]


def test_registry_parameter_counts_agree_with_the_fingerprints():
    from sampler_bench.models.checkpoints import KNOWN

    for name, (_, expected) in PUBLISHED.items():
        assert KNOWN[name].parameters == expected


def test_state_dict_keys_of_published_layout():
    net = meta_net(nets.EDMPrecond, **PUBLISHED["edm-cifar10-32x32-cond-vp"][0])
    keys = list(net.state_dict())
    assert keys[:3] == ["model.map_label.weight", "model.map_label.bias", "model.map_augment.weight"]
    assert "model.enc.16x16_down.conv0.resample_filter" in keys
    assert "model.dec.32x32_aux_conv.weight" in keys and "model.dec.8x8_in0.qkv.weight" in keys
    ve = meta_net(nets.EDMPrecond, **PUBLISHED["edm-cifar10-32x32-cond-ve"][0])
    assert "model.map_noise.freqs" in ve.state_dict() and "model.enc.16x16_aux_residual.weight" in ve.state_dict()
    adm = meta_net(nets.iDDPMPrecond, img_resolution=64, label_dim=1000, **ADM)
    sd = adm.state_dict()
    assert sd["u"].shape == (1001,) and sd["model.out_conv.weight"].shape == (6, 192, 3, 3)
    assert sd["model.map_label.weight"].shape == (768, 1000) and "model.map_label.bias" not in sd


def test_preconditioner_sigma_ranges():
    vp = make_tiny_network("vp", "ddpmpp")
    assert vp.sigma_min == 0.0009765625 and abs(vp.sigma_max - 152.167) < 1e-3
    ve = make_tiny_network("ve", "ncsnpp")
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100)
    idd = make_tiny_network("iddpm", "adm")
    assert abs(idd.sigma_min - 0.0064223) < 1e-6 and abs(idd.sigma_max - 20291.17) < 0.01
    edm = make_tiny_network("edm", "adm")
    assert edm.sigma_min == 0 and edm.sigma_max == math.inf


def test_iddpm_grid_is_the_guided_cosine_schedule():
    u = nets.iddpm_u_grid(dtype=torch.float64)
    cos = DiscreteVP.cosine(1000)
    # u[M-1-t] = sqrt((1 - abar_t) / abar_t) for guided-diffusion's cosine schedule
    rel = ((u[:1000].flip(0) - cos.sigmas) / cos.sigmas).abs().max()
    assert rel < 1e-12


def test_preconditioner_formulas():
    x = torch.randn(2, 3, 8, 8)
    s = torch.tensor([0.3, 7.0])
    for precond, arch in (("vp", "ddpmpp"), ("ve", "ncsnpp"), ("edm", "ddpmpp"), ("iddpm", "adm")):
        net = make_tiny_network(precond, arch)
        seen = {}
        inner = net.model.forward

        def spy(xin, c_noise, class_labels=None, augment_labels=None):
            seen["x"], seen["c"] = xin, c_noise
            return inner(xin, c_noise, class_labels)

        net.model.forward = spy
        out = net(x, s)
        F = inner(seen["x"], seen["c"], None)[:, :3]
        sig = s.reshape(-1, 1, 1, 1)
        if precond == "vp":
            t = ((0.1**2 + 2 * 19.9 * torch.log1p(s**2)).sqrt() - 0.1) / 19.9
            assert torch.allclose(seen["c"], 999 * t, rtol=1e-5)
            assert torch.allclose(out, x - sig * F, atol=1e-5)
            assert torch.allclose(seen["x"], x / (1 + sig**2).sqrt())
        elif precond == "ve":
            assert torch.allclose(seen["c"], torch.log(0.5 * s)) and torch.equal(seen["x"], x)
            assert torch.allclose(out, x + sig * F, atol=1e-5)
        elif precond == "edm":
            assert torch.allclose(seen["c"], s.log() / 4)
            expect = 0.25 / (sig**2 + 0.25) * x + sig * 0.5 / (sig**2 + 0.25).sqrt() * F
            assert torch.allclose(out, expect, atol=1e-5)
        else:
            idx = (s.reshape(-1, 1) - net.u.reshape(1, -1)).abs().argmin(1)
            assert torch.equal(seen["c"], (999 - idx).float())
            assert torch.allclose(out, x - sig * F, atol=1e-5)


def test_adapter_labels_dtype_round_sigma_and_time_maps():
    net = make_tiny_network("vp", "ddpmpp", label_dim=4)
    den = EDMDenoiser(net)
    assert den.label_required and den.num_classes == 4 and den.image_shape == (3, 8, 8)
    assert (den.sigma_min, den.sigma_max) == (0.002, 80.0)
    assert den.network_dtype == torch.float32  # use_fp16 only applies on CUDA
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([1, 3])
    out = den.denoise(x, as_f64(0.7), labels)
    ref = net(x.float(), torch.tensor([0.7, 0.7]), torch.eye(4)[labels])
    assert out.dtype == torch.float64 and torch.equal(out, ref.double())
    tm = den.time_map
    assert tm.name == "edm-vp"
    for t in (1e-5, 0.3, 1.0):  # sigma(t) is VPPrecond.sigma, in float64
        assert abs(float(tm.sigma(as_f64(t))) - math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1)) < 1e-12
    # float64 sigma(epsilon_t) = 1.0005e-3; VPPrecond.sigma_min is its float32 evaluation 0.0009765625
    assert abs(float(tm.sigma(as_f64(1e-5))) - 1.0005e-3) < 1e-6

    idd = EDMDenoiser(make_tiny_network("iddpm", "adm", use_fp16=True))
    assert idd.network_dtype == torch.float32 and idd.time_map.discrete
    assert isinstance(idd.time_map, IDDPMGridTime) and idd.time_map.num_steps == 1000
    n = torch.tensor([0, 10, 500, 999])
    grid = idd.time_map.sigma(n.double())
    assert torch.equal(idd.round_sigma(grid), grid)  # grid points are fixed points of round_sigma
    assert torch.equal(999 - idd.net.round_sigma(grid, return_index=True), n)  # network time input == n
    # below u[M-1] / 2 EDM would snap to u[M] = 0; the adapter keeps positive sigmas positive
    assert float(idd.round_sigma(as_f64(0.002))) == float(idd.net.u[999]) and float(idd.round_sigma(as_f64(0.0))) == 0.0
    assert den.round_sigma(as_f64(0.123456)) == as_f64(0.123456)  # continuous models: identity
    assert EDMDenoiser(make_tiny_network("edm", "adm")).time_map is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 applies on CUDA only")
def test_use_fp16_runs_in_half_precision_on_cuda():
    net = make_tiny_network("edm", "adm", label_dim=3, use_fp16=True)
    den16 = EDMDenoiser(net, device="cuda")
    den32 = EDMDenoiser(make_tiny_network("edm", "adm", label_dim=3, use_fp16=True), device="cuda", force_fp32=True)
    assert den16.network_dtype == torch.float16 and den32.network_dtype == torch.float32
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device="cuda")
    labels = torch.tensor([0, 2], device="cuda")
    a, b = den16.denoise(x, as_f64(1.0), labels), den32.denoise(x, as_f64(1.0), labels)
    assert a.dtype == torch.float64 and not torch.equal(a, b) and torch.allclose(a, b, atol=0.05)
