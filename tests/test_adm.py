"""guided-diffusion (ADM): our networks against the published configs, the .pt round trip, the loader's
refusals, and the discrete-VP sigma-space adapter."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models import adm
from sampler_bench.models.base import DiscreteVP
from sampler_bench.models.checkpoints import KNOWN, load_registry
from sampler_bench.models.nets import adm as nets

# research notes 3.1: parameters and state-dict keys of every published file
PUBLISHED = {
    "adm-imagenet-64x64-cond": (295_904_454, 541),
    "adm-imagenet-128x128-cond": (421_529_606, 493),
    "adm-imagenet-256x256-cond": (553_838_086, 567),
    "adm-imagenet-256x256-uncond": (552_814_086, 566),
    "adm-imagenet-512x512-cond": (558_997_638, 645),
    "adm-lsun-bedroom-256x256": (552_814_086, 566),
    "adm-lsun-cat-256x256": (552_814_086, 566),
    "adm-lsun-horse-256x256": (552_814_086, 566),
    "adm-lsun-horse-nodropout-256x256": (552_814_086, 566),
    "adm-classifier-imagenet-64x64": (65_438_568, 307),
    "adm-classifier-imagenet-128x128": (42_568_040, 221),
    "adm-classifier-imagenet-256x256": (54_096_360, 249),
    "adm-classifier-imagenet-512x512": (54_448_360, 281),
}
REGISTRY = load_registry(formats=("adm-pt",))


def test_registry_lists_every_published_file_with_its_counts():
    assert set(REGISTRY) == set(PUBLISHED)
    assert not set(REGISTRY) & set(KNOWN)  # EDM's list stays EDM-only
    for name, ck in REGISTRY.items():
        assert ck.url.startswith("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/") and ck.url.endswith(".pt")
        assert ck.parameters == PUBLISHED[name][0]
        assert ck.role == ("classifier" if "classifier" in name else "model")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_on_meta_has_the_published_counts(name):
    ck = REGISTRY[name]
    net = adm.build_net(ck.role, ck.flags, "meta")
    params, keys = PUBLISHED[name]
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(net.state_dict()) == keys
    if ck.role == "model":
        mc = ck.flags["num_channels"]
        assert tuple(net.time_embed[0].weight.shape) == (4 * mc, mc)  # sinusoid width mc, not ch0 (512: ch0 = 128)
        assert net.out[2].weight.shape[0] == 6  # learned sigma
    # the file's shapes identify its flags (LSUN and 256-uncond share one flag set)
    flags, _match = adm.infer_flags(net.state_dict(), ck.role, name)
    assert adm._shapes(adm.build_net(ck.role, flags, "meta").state_dict()) == adm._shapes(net.state_dict())


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(p[0].numel(), 1)) if p.ndim >= 2 else 0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


TINY = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            learn_sigma=True, class_cond=True, num_classes=5, use_scale_shift_norm=True, resblock_updown=True)
VARIANTS = {
    "legacy-heads": dict(num_heads=2),
    "new-order-head-channels": dict(num_head_channels=16, use_new_attention_order=True),
    "conv-resample": dict(resblock_updown=False, num_heads=2),
    "no-scale-shift-uncond-eps": dict(use_scale_shift_norm=False, class_cond=False, learn_sigma=False, num_head_channels=32),
    "half-mult-512-style": dict(channel_mult="0.5,1", num_channels=64, num_heads=4, attention_resolutions="16,8"),
    "heads-upsample": dict(num_heads=1, num_heads_upsample=4),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_variant_round_trips_through_pt_strictly(tmp_path, variant):
    flags = {**TINY, **VARIANTS[variant]}
    net = _randomize(adm.build_net("model", flags))
    path = adm.save_state_dict(net, tmp_path / "m.pt")
    loaded, got_flags, info = adm.load_adm_network(path, "model", flags)
    assert info["flags_from"] == "given" and got_flags == flags
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3.0, 640.5])
    y = torch.tensor([1, 4]) if flags["class_cond"] else None
    with torch.no_grad():
        a, b = net(x, t, y), loaded(x, t, y)
    assert a.shape == (2, 6 if flags["learn_sigma"] else 3, 16, 16)
    assert torch.equal(a, b)
    if variant == "half-mult-512-style":
        assert net.ch0 == 32 and tuple(net.time_embed[0].weight.shape) == (256, 64)


def test_tiny_classifier_round_trips(tmp_path):
    net = adm.make_tiny("classifier", seed=3)
    path = adm.save_state_dict(net, tmp_path / "c.pt")
    loaded, flags, info = adm.load_adm_network(path, "classifier")
    assert "tiny-adm classifier" in info["flags_from"]
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10.0, 500.0, 999.0])
    with torch.no_grad():
        assert torch.equal(net(x, t), loaded(x, t))
    assert net(x, t).shape == (3, 10)


def _reference_attention(qkv, heads, new_order):
    """guided-diffusion's QKVAttention(Legacy) as written there: einsum with ch^-1/4 on q and k."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = qkv.chunk(3, dim=1)
        q, k, v = (z.reshape(b * heads, ch, length) for z in (q, k, v))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)


def test_attention_orders_with_hand_built_weights():
    heads, ch, T = 2, 32, 5
    C = heads * ch
    torch.manual_seed(0)
    new = nets.AttentionBlock(C, num_heads=heads, use_new_attention_order=True).double()
    legacy = nets.AttentionBlock(C, num_heads=heads, use_new_attention_order=False).double()
    # legacy row r of head h, part p (q=0,k=1,v=2), channel c  <->  new row p*C + h*ch + c
    perm = torch.tensor([p * C + h * ch + c for h in range(heads) for p in range(3) for c in range(ch)])
    with torch.no_grad():
        legacy.load_state_dict(new.state_dict())
        legacy.qkv.weight.copy_(new.qkv.weight[perm])
        legacy.qkv.bias.copy_(new.qkv.bias[perm])
        new.proj_out.weight.normal_()
        legacy.proj_out.load_state_dict(new.proj_out.state_dict())
    x = torch.randn(2, C, 1, T, dtype=torch.float64) * 3
    with torch.no_grad():
        a, b = new(x), legacy(x)
        qkv = new.qkv(new.norm(x.reshape(2, C, T)))
        ref_new = _reference_attention(qkv, heads, True)
        ref_wrong = _reference_attention(qkv, heads, False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nets.qkv_attention(qkv, heads, True), ref_new, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        qkv_legacy = legacy.qkv(legacy.norm(x.reshape(2, C, T)))
    torch.testing.assert_close(nets.qkv_attention(qkv_legacy, heads, False), ref_new, rtol=1e-12, atol=1e-12)
    assert (ref_new - ref_wrong).abs().max() > 1e-3  # the two layouts really differ on the same weights


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2, 2), "x": _Payload(marker)}, path)
    with pytest.raises(BenchError, match="weights-only loader refused it.*nothing from it was run"):
        adm.read_state_dict(path)
    assert not marker.exists()
    path2 = tmp_path / "evil2.pt"
    with open(path2, "wb") as f:  # a legacy (non-zip) pickle with the same payload
        pickle.dump(_Payload(marker), f, protocol=2)
    with pytest.raises(BenchError):
        adm.read_state_dict(path2)
    assert not marker.exists()


def test_truncated_empty_and_not_a_state_dict(tmp_path):
    good = adm.save_state_dict(adm.make_tiny("model"), tmp_path / "m.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(BenchError, match="truncated"):
        adm.read_state_dict(tmp_path / "trunc.pt")
    with pytest.raises(BenchError, match="empty"):
        adm.read_state_dict(tmp_path / "empty.pt")
    with pytest.raises(BenchError, match="flat state dict"):
        adm.read_state_dict(tmp_path / "list.pt")


def test_keys_that_do_not_fit_the_flags_name_keys_and_flag(tmp_path):
    path = adm.save_state_dict(adm.make_tiny("model"), tmp_path / "m.pt")
    with pytest.raises(BenchError, match=r"missing .*unexpected|unexpected") as e:
        adm.load_adm_network(path, "model", {**adm.TINY_MODEL_FLAGS, "class_cond": False})
    assert "label_emb.weight" in str(e.value) and "class_cond" in str(e.value)
    with pytest.raises(BenchError, match="learn_sigma") as e:
        adm.load_adm_network(path, "model", {**adm.TINY_MODEL_FLAGS, "learn_sigma": False})
    assert "out.2.weight" in str(e.value)
    with pytest.raises(BenchError, match="match no known"):
        net = _randomize(adm.build_net("model", {**TINY, "num_channels": 64, "num_heads": 2}))
        adm.load_adm_network(adm.save_state_dict(net, tmp_path / "other.pt"), "model")


# ---------------------------------------------------------------------------------------------
# The sigma-space adapter
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = adm.save_state_dict(adm.make_tiny("model", seed=1), tmp_path_factory.mktemp("adm") / "model.pt")
    return path


def test_schedules_match_guided_diffusion():
    lin, cos = adm.schedule_from_flags({"noise_schedule": "linear"}), adm.schedule_from_flags({"noise_schedule": "cosine"})
    assert lin.num_steps == cos.num_steps == 1000
    assert float(lin.sigmas[0]) == pytest.approx(0.0100005, rel=1e-5) and float(lin.sigmas[-1]) == pytest.approx(157.41, rel=1e-4)
    assert float(cos.sigmas[0]) == pytest.approx(0.0064254, rel=1e-4) and float(cos.sigmas[-1]) == pytest.approx(20291, rel=1e-3)


def test_denoiser_is_x_minus_sigma_eps_at_grid_points(tiny_model):
    d = adm.load_adm_denoiser(tiny_model)
    net = d.net
    tm = d.time_map
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64) * 5
    y = torch.tensor([0, 3, 9])
    for idx in (0, 47, 523, 999):
        s = tm.sigmas[idx]
        with torch.no_grad():
            out = net((x / torch.sqrt(1 + s**2)).float(), torch.full((3,), float(idx)), y)
        eps = out[:, :3].double()
        assert torch.equal(d.denoise(x, s, y), x - s * eps)
    assert d.describe()["time_mode"] == "interp" and d.sigma_max == 80.0 and d.sigma_min == pytest.approx(0.0100005, rel=1e-5)


def test_time_modes_agree_at_grid_points_and_differ_between(tiny_model):
    a = adm.load_adm_denoiser(tiny_model, time_mode="interp")
    b = adm.load_adm_denoiser(tiny_model, time_mode="nearest")
    grid = a.time_map.sigmas[torch.tensor([0, 1, 95, 476, 952, 999])]
    torch.testing.assert_close(a.time_input(grid), b.time_input(grid), rtol=0, atol=1e-9)
    assert torch.equal(b.time_input(grid), torch.tensor([0, 1, 95, 476, 952, 999], dtype=torch.float64))
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.arange(6)
    torch.testing.assert_close(a.denoise(x, grid, y), b.denoise(x, grid, y), rtol=1e-6, atol=1e-6)
    mid = (a.time_map.sigmas[500] * a.time_map.sigmas[501]).sqrt().reshape(1)
    assert float(a.time_input(mid)) == pytest.approx(500.5, abs=1e-9)
    assert float(b.time_input(mid)) in (500.0, 501.0)
    # round_sigma: nearest snaps to the grid (0 stays 0); interp leaves sigma alone
    assert float(b.round_sigma(mid)) in (float(a.time_map.sigmas[500]), float(a.time_map.sigmas[501]))
    assert float(b.round_sigma(torch.tensor(0.0))) == 0.0
    assert torch.equal(a.round_sigma(mid), mid.double())


def test_time_mode_and_flags_from_the_spec(tiny_model):
    from sampler_bench.models.registry import load_model

    d = load_model(f"adm:path={tiny_model},time_mode=nearest")
    assert d.time_mode == "nearest" and d.image_shape == (3, 16, 16) and d.num_classes == 10
    flags = ",".join(f"{k}={str(v).replace(',', 'x')}" for k, v in adm.TINY_MODEL_FLAGS.items())
    d2 = load_model(f"adm:path={tiny_model},{flags}")
    assert d2.info["flags_from"] == "given"
    with pytest.raises(BenchError, match="time_mode"):
        load_model(f"adm:path={tiny_model},time_mode=cubic")
    with pytest.raises(BenchError, match="takes parameters image_size.*got 'heads=3'"):
        load_model(f"adm:path={tiny_model},heads=3")
    with pytest.raises(BenchError, match="class_cond='maybe' .*not valid"):
        load_model(f"adm:path={tiny_model},class_cond=maybe")
    with pytest.raises(BenchError, match="needs path"):
        load_model("adm:image_size=16")


def test_mixed_precision_is_guided_diffusions_fp16_torso(tiny_model):
    net = adm.make_tiny("model")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 700.0]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = net(x, t, y)
        net.set_fp16(True)
        half = net(x, t, y)
    convs = {f"{m_name}.{k}" for m_name, m in net.named_modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))
             and m_name.startswith(("input_blocks", "middle_block", "output_blocks")) for k in ("weight", "bias")}
    assert len(convs) > 20 and "out.2.weight" not in convs
    for name, p in net.named_parameters():
        assert p.dtype == (torch.float16 if name in convs else torch.float32), name
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ref, rtol=0, atol=0.05 * float(ref.abs().max()))
    assert adm.load_adm_denoiser(tiny_model).network_dtype == torch.float32  # fp16 on CUDA only
