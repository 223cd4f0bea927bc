"""Router settings from Hugging Face model configs (`Router.from_hf_config`).

Each entry reads the fields a model's `config.json` (or transformers config
object) carries and maps them to Router keywords, following the router in
that model's transformers modeling file.  transformers is never imported.
"""

_MISSING = object()


def _getter(config):
    if isinstance(config, dict):
        return lambda key, default=_MISSING: config.get(key, default)
    return lambda key, default=_MISSING: getattr(config, key, default)


def _need(get, model_type, *keys):
    """The first of `keys` present in the config; ValueError naming them if none is."""
    for key in keys:
        value = get(key)
        if value is not _MISSING and value is not None:
            return value
    raise ValueError(f"{model_type} config has no {' or '.join(keys)}")


def _softmax_topk(get, model_type, experts_key, norm_default):
    return dict(
        num_experts=_need(get, model_type, experts_key),
        top_k=_need(get, model_type, "num_experts_per_tok"),
        norm_topk_prob=bool(get("norm_topk_prob", norm_default)),
    )


def _mixtral(get, model_type, bias):
    # MixtralSparseMoeBlock: softmax, topk, always renormalised.
    return dict(
        num_experts=_need(get, model_type, "num_local_experts"),
        top_k=_need(get, model_type, "num_experts_per_tok"),
        norm_topk_prob=True,
    )


def _qwen_olmoe(get, model_type, bias):
    # Qwen2/Qwen3-MoE and OLMoE: softmax, topk, renormalise if norm_topk_prob.
    return _softmax_topk(get, model_type, "num_experts", False)


def _deepseek_v2(get, model_type, bias):
    # DeepseekV2MoEGate: softmax; greedy or group_limited_greedy (group score
    # = max probability); renormalise only if top_k > 1 and norm_topk_prob;
    # then scale.
    top_k = _need(get, model_type, "num_experts_per_tok")
    method = get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(
            f"deepseek_v2 topk_method {method!r} is not supported (greedy, group_limited_greedy)"
        )
    kwargs = dict(
        num_experts=_need(get, model_type, "n_routed_experts"),
        top_k=top_k,
        norm_topk_prob=bool(get("norm_topk_prob", False)) and top_k > 1,
        scoring_func=get("scoring_func", "softmax"),
        routed_scaling_factor=float(get("routed_scaling_factor", 1.0)),
    )
    if method == "group_limited_greedy":
        kwargs.update(
            n_group=_need(get, model_type, "n_group"),
            topk_group=_need(get, model_type, "topk_group"),
        )
    return kwargs


def _deepseek_v3(get, model_type, bias):
    # DeepseekV3TopkRouter / Glm4MoeTopkRouter: sigmoid, + correction bias for
    # selection, group score = sum of the top-2 biased scores, keep
    # topk_group groups, top-k, weights = unbiased scores, renormalise
    # (+1e-20), scale.
    if bias is None:
        raise ValueError(
            f"{model_type} routes with e_score_correction_bias, a weight of the "
            f"gate, not a config field: pass "
            f"Router.from_hf_config(config, e_score_correction_bias=...)"
        )
    return dict(
        num_experts=_need(get, model_type, "n_routed_experts"),
        top_k=_need(get, model_type, "num_experts_per_tok"),
        norm_topk_prob=bool(get("norm_topk_prob", True)),
        scoring_func=get("scoring_func", "sigmoid"),
        n_group=get("n_group", 1) or 1,
        topk_group=get("topk_group", None),
        routed_scaling_factor=float(get("routed_scaling_factor", 1.0)),
        e_score_correction_bias=bias,
    )


def _gpt_oss(get, model_type, bias):
    # GptOssTopKRouter: top-k of the (biased) logits, softmax over those k.
    return dict(
        num_experts=_need(get, model_type, "num_local_experts"),
        top_k=_need(get, model_type, "num_experts_per_tok", "experts_per_token"),
        norm_topk_prob=True,
        topk_on_logits=True,
    )


def _llama4(get, model_type, bias):
    # Llama4TextMoe: top-k of the logits, sigmoid of each, no renormalisation.
    return dict(
        num_experts=_need(get, model_type, "num_local_experts"),
        top_k=_need(get, model_type, "num_experts_per_tok"),
        norm_topk_prob=False,
        scoring_func="sigmoid",
        topk_on_logits=True,
    )


PRESETS = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_olmoe,
    "qwen3_moe": _qwen_olmoe,
    "olmoe": _qwen_olmoe,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "glm4_moe": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
}


def router_kwargs_from_config(config, e_score_correction_bias=None):
    """Router keywords for `config` (dict or attribute object)."""
    get = _getter(config)
    model_type = get("model_type", None)
    if model_type == "llama4":  # the multimodal config nests the text model's
        text = get("text_config", None)
        if text is None:
            raise ValueError("llama4 config has no text_config")
        return router_kwargs_from_config(text, e_score_correction_bias)
    if model_type not in PRESETS:
        raise ValueError(
            f"model_type {model_type!r} is not a MoE model moe_router knows; "
            f"known: {sorted(PRESETS)} (or build a Router(...) directly)"
        )
    if e_score_correction_bias is not None and PRESETS[model_type] is not _deepseek_v3:
        raise ValueError(f"{model_type} has no e_score_correction_bias")
    return PRESETS[model_type](get, model_type, e_score_correction_bias)
