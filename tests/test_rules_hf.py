"""Each new scoring rule against its model's own transformers router module.

The oracle is the module itself (transformers 5.23, random weights and
biases): its logits go to a Router built with the options of that model,
and the ids (as sets where the module does not sort) and the weights must
match.  The PyTorch forms in moe_router._bench (the benchmark's baselines)
are checked against the same modules.  Skipped without torch/transformers.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import moe_router as mr  # noqa: E402
from moe_router import _bench  # noqa: E402

ROWS = 64


def _sorted_by_id(ids, w):
    order = np.argsort(ids, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(w, order, 1)


def _check(out, ids_t, w_t, sort_ids, atol=1e-5):
    ids, w = out.expert_ids.astype(np.int64), out.expert_weights.astype(np.float64)
    oi, ow = ids_t.detach().numpy().astype(np.int64), w_t.detach().numpy().astype(np.float64)
    if sort_ids:  # the module's topk(sorted=False): compare as sets
        ids, w = _sorted_by_id(ids, w)
        oi, ow = _sorted_by_id(oi, ow)
    np.testing.assert_array_equal(ids, oi)
    np.testing.assert_allclose(w, ow, rtol=0, atol=atol)


@pytest.fixture
def gen():
    torch.manual_seed(15)
    return torch.Generator().manual_seed(15)


def _hidden(size, gen):
    return torch.randn(ROWS, size, generator=gen) * 2


def test_ernie4_5_moe(any_path, gen):
    from transformers import Ernie4_5_MoeConfig
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import Ernie4_5_MoeTopKRouter

    cfg = Ernie4_5_MoeConfig(hidden_size=32, moe_num_experts=24, moe_k=6)
    gate = Ernie4_5_MoeTopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_(0, 0.5, generator=gen)
        gate.moe_statics.e_score_correction_bias.normal_(-0.05, 0.05, generator=gen)
    logits, w_t, ids_t = gate(_hidden(32, gen))
    bias = gate.moe_statics.e_score_correction_bias.detach().numpy()[0]
    router = mr.Router(24, 6, e_score_correction_bias=bias, moe_norm_min=cfg.moe_norm_min)
    z = logits.detach().numpy()
    _check(router(z), ids_t, w_t, sort_ids=False)
    form = _bench.torch_ernie4_5_moe(torch, logits, torch.from_numpy(bias), 6)
    _check(router(z), *form, sort_ids=False)


def test_longcat_flash_zero_experts(any_path, gen):
    from transformers import LongcatFlashConfig
    from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashTopkRouter

    cfg = LongcatFlashConfig(
        hidden_size=32,
        n_routed_experts=12,
        zero_expert_num=4,
        moe_topk=3,
        routed_scaling_factor=6.0,
    )
    gate = LongcatFlashTopkRouter(cfg)
    with torch.no_grad():
        gate.classifier.weight.normal_(0, 0.5, generator=gen)
        gate.e_score_correction_bias.normal_(0, 0.1, generator=gen)
    logits, w_t, ids_t = gate(_hidden(32, gen))
    bias = gate.e_score_correction_bias.numpy()
    router = mr.Router(
        16,
        3,
        False,
        e_score_correction_bias=bias,
        routed_scaling_factor=6.0,
        zero_expert_num=4,
    )
    assert router.identity_expert_start == 12
    z = logits.detach().numpy()
    _check(router(z), ids_t, w_t, sort_ids=True)
    form = _bench.torch_longcat_flash(torch, logits, gate.e_score_correction_bias, 3, 6.0)
    _check(router(z), *form, sort_ids=True)


@pytest.mark.parametrize("cap", [0.0, 2.0, 30.0])
def test_laguna_softcap(any_path, gen, cap):
    from transformers.models.laguna.configuration_laguna import LagunaConfig
    from transformers.models.laguna.modeling_laguna import LagunaTopKRouter

    cfg = LagunaConfig(
        hidden_size=32, num_experts=20, num_experts_per_tok=4, moe_router_logit_softcapping=cap
    )
    gate = LagunaTopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_(0, 1.0, generator=gen)
        gate.e_score_correction_bias.normal_(-0.2, 0.3, generator=gen)
    x = _hidden(32, gen)
    capped, w_t, ids_t = gate(x)
    raw = torch.nn.functional.linear(x, gate.weight).float()  # the logits before the cap
    bias = gate.e_score_correction_bias.detach().numpy()
    router = mr.Router(
        20,
        4,
        scoring_func="sigmoid",
        e_score_correction_bias=bias,
        moe_router_logit_softcapping=cap,
    )
    out = router(raw.detach().numpy())
    _check(out, ids_t, w_t, sort_ids=False)
    form = _bench.torch_laguna(torch, raw, gate.e_score_correction_bias, 4, cap)
    _check(out, *form, sort_ids=False)


@pytest.mark.parametrize("p", [1.0, 2.0, None])
def test_dbrx_p_norm(any_path, gen, p):
    from transformers import DbrxConfig
    from transformers.models.dbrx.modeling_dbrx import DbrxFFN

    cfg = DbrxConfig(
        d_model=32,
        ffn_config=dict(
            ffn_hidden_size=8, moe_num_experts=16, moe_top_k=4, moe_normalize_expert_weights=p
        ),
    )
    ffn = DbrxFFN(cfg)
    with torch.no_grad():
        ffn.router.layer.weight.normal_(0, 0.5, generator=gen)
    logits = ffn.router(_hidden(32, gen))
    w_t, ids_t = ffn.route_tokens_to_experts(logits)
    router = mr.Router(16, 4, p is not None, moe_normalize_expert_weights=p)
    out = router(logits.detach().numpy())
    _check(out, ids_t, w_t, sort_ids=False)
    _check(out, *_bench.torch_dbrx(torch, logits, 4, p), sort_ids=False)


def test_deepseek_v4_topk_and_hash(any_path, gen):
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
        DeepseekV4HashRouter,
        DeepseekV4TopKRouter,
    )

    cfg = DeepseekV4Config(
        hidden_size=32, n_routed_experts=32, num_experts_per_tok=6, vocab_size=100
    )
    assert cfg.scoring_func == "sqrtsoftplus"
    gate = DeepseekV4TopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_(0, 1.0, generator=gen)
        gate.e_score_correction_bias.normal_(0, 0.3, generator=gen)
    x = _hidden(32, gen)
    logits, w_t, ids_t = gate(x)
    bias = gate.e_score_correction_bias.numpy()
    router = mr.Router(
        32,
        6,
        scoring_func="sqrtsoftplus",
        e_score_correction_bias=bias,
        routed_scaling_factor=cfg.routed_scaling_factor,
    )
    z = logits.detach().numpy()
    _check(router(z), ids_t, w_t, sort_ids=True)
    form = _bench.torch_deepseek_v4(
        torch, logits, gate.e_score_correction_bias, 6, cfg.routed_scaling_factor
    )
    _check(router(z), *form, sort_ids=True)

    hashed = DeepseekV4HashRouter(cfg)
    with torch.no_grad():
        hashed.weight.normal_(0, 1.0, generator=gen)
        hashed.tid2eid.copy_(torch.randint(0, 32, (100, 6), generator=gen))
    tokens = torch.randint(0, 100, (ROWS,), generator=gen)
    logits, w_t, ids_t = hashed(x, tokens)
    router = mr.Router(
        32,
        6,
        scoring_func="sqrtsoftplus",
        tid2eid=hashed.tid2eid.numpy(),
        routed_scaling_factor=cfg.routed_scaling_factor,
    )
    out = router(logits.detach().numpy(), input_ids=tokens.numpy())
    _check(out, ids_t, w_t, sort_ids=False)  # the table's order
    form = _bench.torch_deepseek_v4_hash(
        torch, logits, hashed.tid2eid, tokens, cfg.routed_scaling_factor
    )
    _check(out, *form, sort_ids=False)


@pytest.mark.parametrize("jitter", [0.01, 0.2])
def test_phimoe_sparsemixer(any_path, gen, jitter):
    from transformers import PhimoeConfig
    from transformers.models.phimoe.modeling_phimoe import PhimoeTopKRouter

    cfg = PhimoeConfig(hidden_size=32, num_local_experts=16, router_jitter_noise=jitter)
    gate = PhimoeTopKRouter(cfg).eval()
    with torch.no_grad():
        gate.weight.normal_(0, 0.5, generator=gen)
    logits, w_t, ids_t = gate(_hidden(32, gen))
    router = mr.Router(16, 2, False, scoring_func="sparsemixer", router_jitter_noise=jitter)
    out = router(logits.detach().numpy())
    _check(out, ids_t, w_t, sort_ids=False)
    _check(out, *_bench.torch_phimoe(torch, logits, jitter), sort_ids=False)
