"""transformers as the oracle: tiny random MoE models generate the same tokens with
experts_implementation="eager" and with moe_router (experts, routers replaced too)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moe_router.hf as mh  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny models: torch's intra-op threads only wait on each other (on a
    # busy host, milliseconds per op).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def _qwen3():
    return transformers.Qwen3MoeConfig(
        **COMMON,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
    ), transformers.Qwen3MoeForCausalLM


def _mixtral():
    return transformers.MixtralConfig(
        **COMMON, intermediate_size=24, num_local_experts=6, num_experts_per_tok=2
    ), transformers.MixtralForCausalLM


def _olmoe():
    c = dict(COMMON)
    c.pop("head_dim")
    return transformers.OlmoeConfig(
        **c, intermediate_size=16, num_experts=8, num_experts_per_tok=3, norm_topk_prob=False
    ), transformers.OlmoeForCausalLM


def _deepseek_v3():
    c = dict(COMMON, num_key_value_heads=4)  # multi-head latent attention
    c.pop("head_dim")
    return transformers.DeepseekV3Config(
        **c,
        intermediate_size=48,
        moe_intermediate_size=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        n_shared_experts=1,
        first_k_dense_replace=0,
        routed_scaling_factor=2.5,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    ), transformers.DeepseekV3ForCausalLM


def _glm4_moe():
    return transformers.Glm4MoeConfig(
        **COMMON,
        intermediate_size=48,
        moe_intermediate_size=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        n_shared_experts=1,
        first_k_dense_replace=0,
        routed_scaling_factor=1.5,
    ), transformers.Glm4MoeForCausalLM


def _gpt_oss():
    return transformers.GptOssConfig(
        **COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2
    ), transformers.GptOssForCausalLM


def _llama4():
    return transformers.Llama4TextConfig(
        **COMMON,
        intermediate_size=16,
        intermediate_size_mlp=48,
        num_local_experts=8,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
    ), transformers.Llama4ForCausalLM


MODELS = {
    "qwen3_moe": _qwen3,
    "mixtral": _mixtral,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
    "glm4_moe": _glm4_moe,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
}


def _randomise_biases(model, gen):
    # Zero-initialised routing biases would hide the bias handling.
    for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
        if "e_score_correction_bias" in name or name.endswith("router.bias") or "proj_bias" in name:
            with torch.no_grad():
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("model_type", list(MODELS))
def test_generate_matches_eager(model_type):
    config, cls = MODELS[model_type]()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = cls(config).eval()
    _randomise_biases(model, gen)
    prompt = torch.randint(0, config.vocab_size, (2, 6), generator=gen)
    kw = dict(
        max_new_tokens=20,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    with torch.no_grad():
        if model._can_set_experts_implementation():
            model.set_experts_implementation("eager")
        want = model.generate(prompt, **kw)
        keys = set(model.state_dict())
        mh.apply(model)
        got = model.generate(prompt, **kw)
    assert set(model.state_dict()) == keys  # the replaced gates keep the parameter names
    assert sum(isinstance(m, mh.MoeRouterGate) for m in model.modules()) == config.num_hidden_layers
    # The dispatch path ran: each MoE layer holds its plan.
    assert (
        sum("_moe_router_plan" in m.__dict__ for m in model.modules()) == config.num_hidden_layers
    )
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_experts_forward_matches_grouped_mm_with_ep_sentinels():
    config, cls = _qwen3()
    torch.manual_seed(1)
    model = cls(config).eval()
    experts = model.model.layers[0].mlp.experts
    h = torch.randn(10, config.hidden_size)
    ids = torch.randint(0, 8, (10, 2))
    ids[3, 1] = 8  # an expert-parallel sentinel (another rank's slot)
    ids[7, 0] = 8
    w = torch.rand(10, 2)
    experts._is_expert_parallel = True
    from transformers.integrations.moe import grouped_mm_experts_forward

    with torch.no_grad():
        want = grouped_mm_experts_forward(experts, h, ids, w)
        got = mh.experts_forward(experts, h, ids, w)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
