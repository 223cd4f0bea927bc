"""The presets against transformers itself: each model's own router module is the oracle.

For every supported model type: a tiny config built by transformers, that
model's router/gate module from its modeling file with random weights and
random (mostly negative) correction biases, run on random hidden states;
`Router.from_hf_config` on the module's logits must pick the same experts
(and in the same order where the module sorts) with weights within 1e-5.
The config is read three ways: the config object, `config.to_dict()`, and the
`config.json` that `save_pretrained` writes, read back as a dict.  The MoE
layers (`moe_router.moe_layers`) are checked against the decoder layers
transformers builds (on the meta device: no memory, no time).
"""

import importlib
import json
import types

import numpy as np
import pytest

import moe_router as mr
from moe_router import _dispatch
from moe_router._presets import router_kwargs_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import AutoConfig  # noqa: E402

H = 16  # hidden size
T = 96  # tokens

E, K = 16, 4
GROUPED = dict(n_group=4, topk_group=2)


def _case(module, router, config, call="plain", ordered=True, logits_at=0):
    return dict(module=module, router=router, config=config, call=call, ordered=ordered)


# model_type -> (modeling module, router class, tiny config fields (the config's
# own names), how the router is called, whether its top-K is sorted by the key
# moe_router sorts by).
CASES = {
    "mixtral": _case(
        "mixtral", "MixtralTopKRouter", dict(num_local_experts=E, num_experts_per_tok=K)
    ),
    "minimax": _case(
        "minimax", "MiniMaxTopKRouter", dict(num_local_experts=E, num_experts_per_tok=K)
    ),
    "qwen2_moe": _case(
        "qwen2_moe", "Qwen2MoeTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "qwen2_moe-norm": _case(
        "qwen2_moe",
        "Qwen2MoeTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K, norm_topk_prob=True),
    ),
    "qwen3_moe": _case(
        "qwen3_moe", "Qwen3MoeTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "qwen3_next": _case(
        "qwen3_next", "Qwen3NextTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "qwen3_5_moe_text": _case(
        "qwen3_5_moe", "Qwen3_5MoeTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "qwen3_vl_moe_text": _case(
        "qwen3_vl_moe", "Qwen3VLMoeTextTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "qwen3_omni_moe_text": _case(
        "qwen3_omni_moe",
        "Qwen3OmniMoeThinkerTextTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K),
    ),
    "qwen3_omni_moe_talker_text": _case(
        "qwen3_omni_moe",
        "Qwen3OmniMoeTalkerTextTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K),
    ),
    "qwen4_exp_text": _case(
        "qwen4_exp", "Qwen4ExpTextTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "olmoe": _case("olmoe", "OlmoeTopKRouter", dict(num_experts=E, num_experts_per_tok=K)),
    "flex_olmo": _case(
        "flex_olmo", "FlexOlmoTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "mellum": _case("mellum", "MellumTopKRouter", dict(num_experts=E, num_experts_per_tok=K)),
    "hunyuan_v1_moe": _case(
        "hunyuan_v1_moe", "HunYuanMoEV1Gate", dict(num_experts=E, moe_topk=K), call="layer"
    ),
    "hunyuan_v1_moe-lists": _case(
        "hunyuan_v1_moe",
        "HunYuanMoEV1Gate",
        dict(num_experts=E, moe_topk=K, num_hidden_layers=4),
        call="layer",
    ),
    "jamba": _case("jamba", "JambaTopKRouter", dict(num_experts=E, num_experts_per_tok=K)),
    "dbrx": _case(
        "dbrx",
        "DbrxFFN",
        dict(d_model=H, ffn_config=dict(moe_num_experts=E, moe_top_k=K)),
        call="dbrx",
    ),
    "dbrx-nonorm": _case(
        "dbrx",
        "DbrxFFN",
        dict(
            d_model=H,
            ffn_config=dict(moe_num_experts=E, moe_top_k=K, moe_normalize_expert_weights=None),
        ),
        call="dbrx",
    ),
    "mistral4": _case(
        "mistral4",
        "Mistral4TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, routed_scaling_factor=1.5),
        ordered=False,
    ),
    "mistral_large4_text": _case(
        "mistral_large4",
        "MistralLarge4TextTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "deepseek_v2": _case(
        "deepseek_v2",
        "DeepseekV2TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, routed_scaling_factor=16.0),
        ordered=False,
    ),
    "deepseek_v2-norm_topk_prob": _case(  # transformers 5.23's router ignores the flag
        "deepseek_v2",
        "DeepseekV2TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, norm_topk_prob=True),
        ordered=False,
    ),
    "deepseek_v2-grouped": _case(
        "deepseek_v2",
        "DeepseekV2TopkRouter",
        dict(
            n_routed_experts=E, num_experts_per_tok=K, topk_method="group_limited_greedy", **GROUPED
        ),
        ordered=False,
    ),
    "deepseek_ocr2_text": _case(
        "deepseek_ocr2",
        "DeepseekOcr2TextTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "unlimited_ocr_text": _case(
        "unlimited_ocr",
        "UnlimitedOcrTextTopkRouter",
        dict(
            n_routed_experts=E, num_experts_per_tok=K, topk_method="group_limited_greedy", **GROUPED
        ),
        ordered=False,
    ),
    "gpt_oss": _case(
        "gpt_oss", "GptOssTopKRouter", dict(num_local_experts=E, num_experts_per_tok=K)
    ),
    "granitemoe": _case(
        "granitemoe", "GraniteMoeTopKRouter", dict(num_local_experts=E, num_experts_per_tok=K)
    ),
    "granitemoe_swa": _case(
        "granitemoe_swa",
        "GraniteMoeSWATopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K),
    ),
    "granitemoeshared": _case(
        "granitemoeshared",
        "GraniteMoeSharedTopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K),
    ),
    "granitemoehybrid": _case(
        "granitemoehybrid",
        "GraniteMoeHybridTopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K, mamba_n_heads=4, mamba_d_head=8),
    ),
    "jetmoe": _case(
        "jetmoe",
        "JetMoeTopKGating",
        dict(num_local_experts=E, num_experts_per_tok=K),
        call="jetmoe",
    ),
    "aria_text": _case("aria", "AriaTextTopKRouter", dict(moe_num_experts=E, moe_topk=K)),
    "openai_privacy_filter": _case(
        "openai_privacy_filter",
        "OpenAIPrivacyFilterTopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K),
    ),
    "cohere2_moe": _case(
        "cohere2_moe", "Cohere2MoeTopKRouter", dict(num_experts=E, num_experts_per_tok=K)
    ),
    "cohere2_moe-sigmoid": _case(
        "cohere2_moe",
        "Cohere2MoeTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K, expert_selection_fn="sigmoid"),
    ),
    "cohere2_moe-sigmoid-nonorm": _case(
        "cohere2_moe",
        "Cohere2MoeTopKRouter",
        dict(
            num_experts=E,
            num_experts_per_tok=K,
            expert_selection_fn="sigmoid",
            norm_topk_prob=False,
        ),
    ),
    "llama4_text": _case(
        "llama4", "Llama4Router", dict(num_local_experts=E, num_experts_per_tok=K), call="llama4"
    ),
    "deepseek_v3": _case(
        "deepseek_v3",
        "DeepseekV3TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, **GROUPED),
        ordered=False,
    ),
    "deepseek_v32": _case(
        "deepseek_v32",
        "DeepseekV32TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, **GROUPED),
        ordered=False,
    ),
    "glm4_moe": _case(
        "glm4_moe",
        "Glm4MoeTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "glm4v_moe_text": _case(
        "glm4v_moe",
        "Glm4vMoeTextTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "glm4_moe_lite": _case(
        "glm4_moe_lite",
        "Glm4MoeLiteTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "glm5_next_text": _case(
        "glm5_next",
        "Glm5NextTextTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "glm_moe_dsa": _case(
        "glm_moe_dsa",
        "GlmMoeDsaTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "axk1": _case(
        "axk1",
        "AXK1TopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, **GROUPED),
        ordered=False,
    ),
    "axk2": _case(
        "axk2", "AXK2TopkRouter", dict(n_routed_experts=E, num_experts_per_tok=K), ordered=False
    ),
    "bailing_hybrid": _case(
        "bailing_hybrid",
        "BailingHybridTopkRouter",
        dict(num_experts=E, num_experts_per_token=K, num_expert_group=4, topk_group=2),
        ordered=False,
    ),
    "kimi_linear": _case(
        "kimi_linear",
        "KimiLinearTopkRouter",
        dict(num_experts=E, num_experts_per_token=K),
        ordered=False,
    ),
    "dots1": _case(
        "dots1", "Dots1TopkRouter", dict(n_routed_experts=E, num_experts_per_tok=K), ordered=False
    ),
    "dots3_note_text": _case(
        "dots3_note",
        "Dots3NoteTextTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "exaone_moe": _case(
        "exaone_moe",
        "ExaoneMoeTopkRouter",
        dict(num_experts=E, num_experts_per_tok=K, **GROUPED),
        ordered=False,
    ),
    "hy_v4": _case(
        "hy_v4", "HYV4TopkRouter", dict(n_routed_experts=E, num_experts_per_tok=K), ordered=False
    ),
    "mimo_v2_flash": _case(
        "mimo_v2_flash",
        "MiMoV2FlashTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "nemotron_h": _case(
        "nemotron_h",
        "NemotronHTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, **GROUPED),
        ordered=False,
    ),
    "solar_open": _case(
        "solar_open",
        "SolarOpenTopkRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "beam": _case("beam", "BeamTopKRouter", dict(num_experts=E, num_experts_per_tok=K, **GROUPED)),
    "afmoe": _case(
        "afmoe",
        "AfmoeTokenChoiceRouter",
        dict(num_experts=E, num_experts_per_tok=K, route_scale=2.0),
        call="bias_arg",
    ),
    "minimax_m2": _case(
        "minimax_m2",
        "MiniMaxM2TopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K),
        call="bias_arg",
        ordered=False,
    ),
    "minimax_m3_vl_text": _case(
        "minimax_m3_vl",
        "MiniMaxM3VLTopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "step3p5": _case(
        "step3p7",
        "Step3p7TopKRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "hy_v3": _case(
        "hy_v3",
        "HYV3TopKRouter",
        dict(num_experts=E, num_experts_per_tok=K),
        call="bias_arg",
        ordered=False,
    ),
    "muse_spark_text": _case(
        "muse_spark",
        "MuseSparkTopkRouter",
        dict(num_local_experts=E, num_experts_per_tok=K, routed_scaling_factor=2.0),
        ordered=False,
    ),
    "inkling2_text": _case(
        "inkling2",
        "Inkling2TopKRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K),
        ordered=False,
    ),
    "laguna": _case("laguna", "LagunaTopKRouter", dict(num_experts=E, num_experts_per_tok=K)),
    "flint": _case("flint", "FlintTopKRouter", dict(num_experts=E, num_experts_per_tok=K)),
    "lfm2_moe": _case(
        "lfm2_moe",
        "Lfm2MoeTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K, routed_scaling_factor=1.25),
        call="bias_arg",
    ),
    "dots3_note_vision_encoder": _case(
        "dots3_note",
        "Dots3NoteVisionTopKRouter",
        dict(pyramid_num_routed=[-1, 4, 8, 16], num_experts_per_tok=6, adapter_in_dim=H),
        call="per_layer",
        ordered=False,
    ),
    "ernie4_5_moe": _case(
        "ernie4_5_moe", "Ernie4_5_MoeTopKRouter", dict(moe_num_experts=E, moe_k=K)
    ),
    "ernie4_5_vl_moe_text": _case(
        "ernie4_5_vl_moe", "Ernie4_5_VLMoeMoeTopKRouter", dict(moe_num_experts=E, moe_k=K)
    ),
    "longcat_flash": _case(
        "longcat_flash",
        "LongcatFlashTopkRouter",
        dict(n_routed_experts=12, zero_expert_num=4, moe_topk=K),
        ordered=False,
    ),
    "deepseek_v4": _case(
        "deepseek_v4",
        "DeepseekV4TopKRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, routed_scaling_factor=2.0),
        ordered=False,
    ),
    "deepseek_v4-hash": _case(
        "deepseek_v4",
        "DeepseekV4HashRouter",
        dict(
            n_routed_experts=E,
            num_experts_per_tok=K,
            vocab_size=50,
            num_hidden_layers=3,
            mlp_layer_types=["hash_moe", "moe", "moe"],
        ),
        call="hash",
    ),
    "phimoe": _case("phimoe", "PhimoeTopKRouter", dict(num_local_experts=E, num_experts_per_tok=2)),
    "phimoe-jitter": _case(
        "phimoe",
        "PhimoeTopKRouter",
        dict(num_local_experts=E, num_experts_per_tok=2, router_jitter_noise=0.3),
    ),
    "dbrx-p2": _case(
        "dbrx",
        "DbrxFFN",
        dict(
            d_model=H,
            ffn_config=dict(moe_num_experts=E, moe_top_k=K, moe_normalize_expert_weights=2.0),
        ),
        call="dbrx",
    ),
    "laguna-softcap": _case(
        "laguna",
        "LagunaTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K, moe_router_logit_softcapping=1.5),
        call="raw_logits",
    ),
    "inkling2_text-sqrtsoftplus": _case(
        "inkling2",
        "Inkling2TopKRouter",
        dict(n_routed_experts=E, num_experts_per_tok=K, scoring_func="sqrtsoftplus"),
        ordered=False,
    ),
    "lfm2_moe-nobias": _case(
        "lfm2_moe",
        "Lfm2MoeTopKRouter",
        dict(num_experts=E, num_experts_per_tok=K, use_expert_bias=False),
    ),
}


def _model_type(case_name):
    return case_name.split("-")[0]


TINY = dict(hidden_size=H, num_attention_heads=2, num_key_value_heads=2)


def _config(case_name):
    case = CASES[case_name]
    tiny = {} if "d_model" in case["config"] else TINY
    return AutoConfig.for_model(_model_type(case_name), **tiny, **case["config"])


def _randomise(module, gen):
    """Random weights; biases random and mostly negative (they decide selections)."""
    biases = {}
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if "bias" in name.split(".")[-1]:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3 - 0.4)
                biases[name] = tensor
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return biases


def _run_router(case_name, config, gen, layer_idx=None):
    """The module's (logits, weights, ids, correction bias or None) on random tokens."""
    case = CASES[case_name]
    modeling = importlib.import_module(
        f"transformers.models.{case['module']}.modeling_{case['module']}"
    )
    cls = getattr(modeling, case["router"])
    call = case["call"]
    x = torch.randn(T, H, generator=gen)
    if call == "dbrx":
        ffn = cls(config)
        _randomise(ffn, gen)
        logits = ffn.router(x)
        w, ids = ffn.route_tokens_to_experts(logits)
        return logits, w, ids, None
    if call == "jetmoe":
        gate = cls(H, config.num_local_experts, config.num_experts_per_tok)
        _randomise(gate, gen)
        order, token, gates, sizes, logits = gate(x)
        k = config.num_experts_per_tok
        expert = np.repeat(np.arange(len(sizes)), sizes)
        ids = np.zeros((T, k), np.int64)
        w = np.zeros((T, k), np.float32)
        slot = order.numpy() % k  # position of the entry within its token's K
        ids[token.numpy(), slot] = expert
        w[token.numpy(), slot] = gates.detach().numpy()
        return logits, torch.from_numpy(w), torch.from_numpy(ids), None
    if call == "per_layer":  # the layer's own config (transformers' per_layer_config)
        module = cls(config.per_layer_config[layer_idx])
        call = "bias_arg"
    else:
        module = cls(config, layer_idx) if call == "layer" else cls(config)
    module.eval()  # inference: no jitter, sparsemixer's inference branch
    biases = _randomise(module, gen)
    bias = None
    if call == "hash":
        with torch.no_grad():
            module.tid2eid.copy_(
                torch.stack(
                    [
                        torch.randperm(module.num_experts, generator=gen)[: module.top_k]
                        for _ in range(module.tid2eid.shape[0])
                    ]
                )
            )
        tokens = torch.randint(0, module.tid2eid.shape[0], (T,), generator=gen)
        logits, w, ids = module(x, tokens)
        return logits, w, ids, None, (tokens, module.tid2eid.clone())
    if call == "raw_logits":
        # the module returns its logits after soft-capping: take them before
        out = module(x)
        raw = torch.nn.functional.linear(x, module.weight).float()
        bias = module.e_score_correction_bias.detach().reshape(-1)
        return raw, out[1], out[2], bias
    if call == "bias_arg":  # the MoE block owns the bias and passes it in
        bias = torch.randn(module.num_experts, generator=gen) * 0.3 - 0.4
        if case_name.startswith("lfm2"):
            out = module(x, expert_bias=bias)
        elif case_name.startswith("afmoe"):
            out = module(x.unsqueeze(0), bias)
        else:
            out = module(x, bias)
    else:
        out = module(x)
        for name, b in biases.items():
            if name.endswith("e_score_correction_bias"):
                bias = b.reshape(-1)
    if call == "llama4":
        scores, logits = out
        ids = torch.topk(scores, config.num_experts_per_tok, dim=1).indices
        return logits, scores.gather(1, ids), ids, None
    logits, w, ids = out[:3]
    return logits, w, ids, bias


def _run(case_name, config, gen, layer_idx=None):
    result = _run_router(case_name, config, gen, layer_idx)
    return result if len(result) == 5 else (*result, None)


def _check(case_name, router, logits, w, ids, tokens=None):
    z = np.ascontiguousarray(logits.detach().float().numpy())
    ids = ids.numpy().astype(np.int64)
    w = w.detach().double().numpy()
    for path in _dispatch.available_paths():  # every kernel path this CPU runs
        old = _dispatch.select(path)
        try:
            out = router(z) if tokens is None else router(z, input_ids=tokens.numpy())
        finally:
            _dispatch.select(old)
        _compare(case_name, out.expert_ids.astype(np.int64), out.expert_weights, ids, w)


def _compare(case_name, got_ids, got_w, ids, w):
    got_w = got_w.astype(np.float64)
    assert got_ids.shape == ids.shape
    if CASES[case_name]["ordered"]:
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_allclose(got_w, w, rtol=0, atol=1e-5)
    else:
        order_got, order_ref = np.argsort(got_ids, axis=1), np.argsort(ids, axis=1)
        np.testing.assert_array_equal(
            np.take_along_axis(got_ids, order_got, 1), np.take_along_axis(ids, order_ref, 1)
        )
        np.testing.assert_allclose(
            np.take_along_axis(got_w, order_got, 1),
            np.take_along_axis(w, order_ref, 1),
            rtol=0,
            atol=1e-5,
        )


def _three_ways(config, tmp_path):
    config.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as fh:
        saved = json.load(fh)
    return {"object": config, "to_dict": config.to_dict(), "config.json": saved}


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_preset_matches_the_models_router(case_name, tmp_path):
    config = _config(case_name)
    layers = [None]
    sources = _three_ways(config, tmp_path)
    if case_name == "hunyuan_v1_moe-lists":
        # HunYuan's gate takes per-layer lists of num_experts / moe_topk (the
        # hub's configs have them); transformers 5.23's config class only
        # types ints, so the lists go in a plain attribute object.
        d = dict(config.to_dict(), num_experts=[8, E, 12, E], moe_topk=[2, K, 3, 1])
        config = types.SimpleNamespace(**d)
        sources = {"object": config, "dict": d}
        layers = [0, 1, 2, 3]
    if CASES[case_name]["call"] == "per_layer":
        layers = [1, 2, 3]
    for layer_idx in layers:  # the module once per layer, the config read each way
        gen = torch.Generator().manual_seed(1234 + (layer_idx or 0))
        logits, w, ids, bias, hashed = _run(case_name, config, gen, layer_idx)
        extra, tokens = {}, None
        if hashed is not None:  # hash routing: the module's table; layer 0 is hash_moe
            tokens, table = hashed
            extra = dict(layer_idx=0, tid2eid=table.numpy())
        if layer_idx is not None:
            extra["layer_idx"] = layer_idx
        for source_name, source in sources.items():
            router = mr.Router.from_hf_config(
                source,
                e_score_correction_bias=None if bias is None else bias.detach().numpy(),
                **extra,
            )
            assert router.num_experts == logits.shape[-1], source_name
            _check(case_name, router, logits, w, ids, tokens)


def test_every_supported_type_is_tested():
    assert {_model_type(c) for c in CASES} == set(mr.presets())


# --- which layers are MoE: the decoder layers transformers builds ----------


LAYER_CASES = {
    # model_type: config fields (legacy ones where the model has them)
    "qwen3_moe": dict(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3]),
    "qwen2_moe": dict(num_hidden_layers=5, mlp_only_layers=[0, 4]),
    "flint": dict(num_hidden_layers=5),
    "deepseek_v3": dict(num_hidden_layers=6, first_k_dense_replace=2),
    "deepseek_v2": dict(num_hidden_layers=4, first_k_dense_replace=1),
    "glm4_moe": dict(num_hidden_layers=4),
    "deepseek_v32": dict(num_hidden_layers=5, first_k_dense_replace=2),
    "axk1": dict(num_hidden_layers=6, first_k_dense_replace=1, moe_layer_freq=2),
    "kimi_linear": dict(num_hidden_layers=4, first_k_dense_replace=2),
    "jamba": dict(num_hidden_layers=6, expert_layer_period=3, expert_layer_offset=1),
    "llama4_text": dict(num_hidden_layers=6, interleave_moe_layer_step=2),
    "afmoe": dict(num_hidden_layers=4, num_dense_layers=2),
    "lfm2_moe": dict(num_hidden_layers=4, layer_types=["conv", "full_attention"] * 2),
    "glm4_moe_lite": dict(num_hidden_layers=4),
    "mimo_v2_flash": dict(num_hidden_layers=4),
    "beam": dict(num_hidden_layers=5),
    "mixtral": dict(num_hidden_layers=3),
    "nemotron_h": dict(hybrid_override_pattern="M-E*E"),
}


def _decoder_layer_class(modeling):
    for name in dir(modeling):
        obj = getattr(modeling, name)
        if (
            name.endswith(("DecoderLayer", "HBlock"))
            and isinstance(obj, type)
            and "Vision" not in name
        ):
            return obj
    raise AssertionError(f"no decoder layer in {modeling.__name__}")


@pytest.mark.parametrize("model_type", sorted(LAYER_CASES))
def test_moe_layers_match_the_decoder_layers(model_type, tmp_path):
    case = next(c for n, c in CASES.items() if _model_type(n) == model_type)
    modeling = importlib.import_module(
        f"transformers.models.{case['module']}.modeling_{case['module']}"
    )
    fields = {**case["config"], **LAYER_CASES[model_type]}
    config = AutoConfig.for_model(model_type, **fields)
    layer_cls = _decoder_layer_class(modeling)
    router_cls = getattr(modeling, case["router"])
    n = config.num_hidden_layers
    expected = []
    with torch.device("meta"):
        for i in range(n):
            layer = layer_cls(config, i)
            if any(isinstance(m, router_cls) for m in layer.modules()):
                expected.append(i)
    for source in _three_ways(config, tmp_path).values():
        assert mr.moe_layers(source) == expected
    # the legacy fields alone, as in a hand-written config.json
    legacy = {"model_type": model_type, **fields}
    assert mr.moe_layers(legacy) == expected
    dense = sorted(set(range(n)) - set(expected))
    if dense:
        with pytest.raises(
            ValueError, match=f"layer {dense[0]} of this {model_type} config is a dense MLP"
        ):
            mr.Router.from_hf_config(config, layer_idx=dense[0])


# --- defaults, nesting, aliases ---------------------------------------------


@pytest.mark.parametrize("model_type", sorted(mr.presets()))
def test_defaults_are_the_config_classes(model_type):
    """A config.json with only the expert count and top-K reads as transformers fills it in."""
    case = next(c for n, c in CASES.items() if _model_type(n) == model_type)
    fields = case["config"]
    config = AutoConfig.for_model(model_type, **({} if "d_model" in fields else TINY), **fields)
    layer = {"layer_idx": 3} if "pyramid_num_routed" in fields else {}
    full = _settings(_router_any_bias(config.to_dict(), **layer))
    assert _settings(_router_any_bias({"model_type": model_type, **fields}, **layer)) == full


def _router_any_bias(config, **kwargs):
    """The preset's Router, with a zero correction bias if the model has one."""
    try:
        return mr.Router.from_hf_config(config, **kwargs)
    except ValueError as e:
        if "pass Router.from_hf_config(config, e_score_correction_bias" not in str(e):
            raise
        # a zero bias of the preset's expert count (read without building a Router)
        n = router_kwargs_from_config(config, np.zeros(1), kwargs.get("layer_idx"))["num_experts"]
        return mr.Router.from_hf_config(config, e_score_correction_bias=np.zeros(n), **kwargs)


def _settings(r):
    return (
        r.num_experts,
        r.top_k,
        r.norm_topk_prob,
        r.scoring_func,
        r.topk_on_logits,
        r.n_group,
        r.topk_group,
        r.routed_scaling_factor,
        r.e_score_correction_bias is None,
    )


NESTED_CASES = {
    "llama4": "llama4_text",
    "aria": "aria_text",
    "qwen3_5_moe": "qwen3_5_moe_text",
    "qwen3_vl_moe": "qwen3_vl_moe_text",
    "qwen4_exp": "qwen4_exp_text",
    "glm4v_moe": "glm4v_moe_text",
    "glm5_next": "glm5_next_text",
    "minimax_m3_vl": "minimax_m3_vl_text",
    "mistral_large4": "mistral_large4_text",
    "muse_spark": "muse_spark_text",
    "step3p7": "step3p5",
    "dots3_note": "dots3_note_text",
    "inkling2": "inkling2_text",
    "deepseek_ocr2": "deepseek_ocr2_text",
    "unlimited_ocr": "unlimited_ocr_text",
}


@pytest.mark.parametrize("outer", sorted(NESTED_CASES))
def test_multimodal_configs_read_their_text_config(outer, tmp_path):
    inner = NESTED_CASES[outer]
    case = next(c for n, c in CASES.items() if _model_type(n) == inner)
    text = dict(case["config"])  # default sizes: the vision/audio towers must match them
    config = AutoConfig.for_model(outer, text_config=text)
    expected = _settings(_router_any_bias(AutoConfig.for_model(inner, **text)))
    for source in _three_ways(config, tmp_path).values():
        assert _settings(_router_any_bias(source)) == expected


def test_qwen3_omni_reads_the_thinkers_text_config():
    text = dict(TINY, num_experts=E, num_experts_per_tok=K, norm_topk_prob=False)
    config = AutoConfig.for_model("qwen3_omni_moe", thinker_config=dict(text_config=text))
    r = mr.Router.from_hf_config(config.to_dict())
    assert (r.num_experts, r.top_k, r.norm_topk_prob) == (E, K, False)


def test_num_local_experts_written_by_transformers_is_read():
    # The bug of issue 15: Qwen3MoeConfig(...).to_dict() names the expert
    # count num_local_experts (attribute_map alias of num_experts).
    d = AutoConfig.for_model("qwen3_moe", num_experts=E, num_experts_per_tok=K).to_dict()
    assert "num_local_experts" in d and "num_experts" not in d
    assert mr.Router.from_hf_config(d).num_experts == E
    assert (
        mr.Router.from_hf_config(
            {"model_type": "qwen3_moe", "num_experts": E, "num_experts_per_tok": K}
        ).num_experts
        == E
    )


def test_unsupported_types_raise_with_the_reason():
    for model_type, reason in mr.unsupported().items():
        with pytest.raises(ValueError, match=f"'{model_type}' has no moe_router preset"):
            mr.Router.from_hf_config({"model_type": model_type})
        assert reason
    # through a multimodal wrapper too
    with pytest.raises(ValueError, match="per_expert_scale"):
        mr.Router.from_hf_config(AutoConfig.for_model("gemma4").to_dict())


def test_longcat_zero_computation_experts_are_marked():
    config = _config("longcat_flash")  # 12 routed + 4 zero-computation experts
    r = mr.Router.from_hf_config(config.to_dict(), e_score_correction_bias=np.zeros(16))
    assert (r.num_experts, r.zero_expert_num, r.identity_expert_start) == (16, 4, 12)


def test_every_moe_model_of_transformers_is_supported_or_listed():
    """Each modeling file that routes to experts has a model type that
    presets(), unsupported() or a multimodal wrapper covers (a guard for new
    transformers versions)."""
    import pathlib
    import re

    from moe_router._presets import NESTED

    known = set(mr.presets()) | set(mr.unsupported()) | set(NESTED)
    models = pathlib.Path(transformers.__file__).parent / "models"
    missing = []
    for modeling in sorted(models.glob("*/modeling_*.py")):
        src = modeling.read_text()
        if not re.search(r"\bexperts?\b", src) or not re.search(
            r"num_experts_per_tok|moe_topk|moe_k\b|moe_top_k|top_k_experts|"
            r"expert_capacity|NaiveMoe|router_gate",
            src,
        ):
            continue
        types = set()
        for config_file in modeling.parent.glob("configuration_*.py"):
            types |= set(re.findall(r'model_type\s*=\s*"([^"]+)"', config_file.read_text()))
        if not types & known:
            missing.append((modeling.parent.name, sorted(types)))
    assert not missing
