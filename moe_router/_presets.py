"""Router settings from Hugging Face model configs (`Router.from_hf_config`).

Each preset reads the fields a model's `config.json` (or transformers config
object) carries and maps them to Router keywords, following the router
module in that model's transformers 5.23 modeling file.  transformers is
never imported: a config is read the way transformers reads it, each field
by its name or by the alias of the config class's `attribute_map` (a config
that transformers 5 writes may name `num_experts` `num_local_experts`), a
missing field taking the config class's default, a multimodal config's MoE
fields under its `text_config`, DBRX's under `ffn_config`.
"""

import difflib
import numbers

_MISSING = object()

# The variants a preset maps to (the rows of the README's variant table).
VARIANTS = {
    "softmax": "S = top-K(softmax(z)); w = p[S], renormalised if norm_topk_prob; w *= scale",
    "softmax_grouped": (
        "p = softmax(z); keep the topk_group groups of best max(p); S = top-K(p) in them; "
        "w = p[S] * scale"
    ),
    "topk_logits_softmax": "S = top-K(z); w = softmax(z[S]) * scale",
    "topk_logits_sigmoid": "S = top-K(z); w = sigmoid(z[S]), renormalised if norm_topk_prob",
    "sigmoid": (
        "s = sigmoid(z), c = s + b (correction bias, if the gate has one); keep the "
        "topk_group groups of best top-2 sum of c; S = top-K(c) in them; w = s[S], "
        "renormalised (+1e-20) if norm_topk_prob; w *= scale"
    ),
    "softmax_biased": (
        "p = softmax(z); S = top-K(p + b); w = p[S], renormalised by max(sum, moe_norm_min) "
        "if norm_topk_prob; w *= scale"
    ),
    "sqrtsoftplus": (
        "s = sqrt(softplus(z)); S = top-K(s + b), or tid2eid[input_id] on hash layers; "
        "w = s[S] / (sum + 1e-20) * scale"
    ),
    "sparsemixer": (
        "PhiMoE's sparsemixer top-2 at inference (masked softmaxes at router_jitter_noise)"
    ),
}


class _Fields:
    """A config (dict or attribute object) read as transformers reads it.

    `aliases` maps a field to its other names (the config class's
    `attribute_map`, in both directions, and legacy names); `defaults` gives
    the config class's default for a field the config leaves out.
    """

    def __init__(self, raw, model_type, aliases=None, defaults=None, layer=None):
        self.raw = raw
        self.model_type = model_type
        self.aliases = aliases or {}
        self.defaults = defaults or {}
        self.layer = layer  # a layer's own settings (per_layer_config), read first

    def _lookup(self, key):
        for source in (self.layer, self.raw):
            if source is None:
                continue
            if isinstance(source, dict):
                value = source.get(key, _MISSING)
            else:
                value = getattr(source, key, _MISSING)
            if value is not _MISSING:
                return value
        return _MISSING

    def at_layer(self, layer_idx):
        """These fields as layer `layer_idx` sees them: transformers' per_layer_config
        (a sequence of per-layer configs on a config object; in a config.json a dict
        of the fields that differ, keyed by the layer index as a string, maybe
        zero-padded)."""
        per_layer = (
            self.raw.get("per_layer_config")
            if isinstance(self.raw, dict)
            else (getattr(self.raw, "per_layer_config", None))
        )
        layer = None
        if isinstance(per_layer, dict):
            for key, value in per_layer.items():
                if str(key).isdigit() and int(key) == layer_idx:
                    layer = value
        elif per_layer is not None and not isinstance(per_layer, str):
            try:
                layer = per_layer[layer_idx]
            except (IndexError, KeyError, TypeError):
                layer = None
        if layer is None:
            return self
        return _Fields(self.raw, self.model_type, self.aliases, self.defaults, layer)

    def has_per_layer(self):
        per_layer = (
            self.raw.get("per_layer_config")
            if isinstance(self.raw, dict)
            else (getattr(self.raw, "per_layer_config", None))
        )
        try:  # a transformers view sizes itself from the config's layer count
            return per_layer is not None and len(per_layer) > 0
        except (AttributeError, TypeError):
            return False

    def names(self, name):
        return (name, *self.aliases.get(name, ()))

    def has(self, name):
        return any(self._lookup(key) is not _MISSING for key in self.names(name))

    def get(self, name, default=_MISSING):
        for key in self.names(name):
            value = self._lookup(key)
            if value is not _MISSING:
                return value
        if default is not _MISSING:
            return default
        return self.defaults.get(name)

    def integer(self, name, low=None, default=None):
        """An int field (None if absent and no default), ValueError naming it if not one."""
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{self.model_type} config field {name} must be an int, got {value!r}")
        if low is not None and value < low:
            raise ValueError(f"{self.model_type} config field {name} must be >= {low}, got {value}")
        return int(value)

    def sequence(self, name):
        """A list field (None if absent), ValueError naming it if not a list."""
        value = self.get(name)
        if value is not None and not isinstance(value, (list, tuple)):
            raise ValueError(f"{self.model_type} config field {name} must be a list, got {value!r}")
        return value

    def need(self, name):
        value = self.get(name)
        if value is None:
            others = self.names(name)[1:]
            also = f" (nor its alias {' or '.join(others)})" if others else ""
            raise ValueError(f"{self.model_type} config has no {name}{also}")
        return value


def _real(f, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{f.model_type} config field {name} must be a number, got {value!r}")
    return float(value)


def _per_layer(f, name, layer_idx):
    """A field that may be one value or a list of one value per layer (HunYuan)."""
    value = f.need(name)
    if not isinstance(value, (list, tuple)):
        return value
    if layer_idx is None:
        if len(set(value)) == 1:
            return value[0]
        raise ValueError(
            f"{f.model_type} config sets {name} per layer ({list(value)}): pass "
            f"Router.from_hf_config(config, layer_idx=...)"
        )
    if not 0 <= layer_idx < len(value):
        raise ValueError(
            f"layer_idx={layer_idx} is out of range for {f.model_type}'s {name} "
            f"({len(value)} layers)"
        )
    return value[layer_idx]


# --- the presets ------------------------------------------------------------
#
# A preset is a Spec: the variant, the fields it reads (with their aliases and
# the config class's defaults), whether the gate has a correction bias (a
# weight, passed as e_score_correction_bias=), and how the model decides which
# layers are MoE.  build(f, layer_idx) returns the Router keywords.


class _Spec:
    def __init__(
        self,
        variant,
        build,
        aliases=None,
        defaults=None,
        bias="never",
        layers=None,
        note="",
        hash_layers=None,
        layer_settings=None,
    ):
        self.variant = variant
        self.build = build
        self.aliases = aliases or {}
        self.defaults = defaults or {}
        self.bias = bias  # "never", "required", or a callable(f) -> bool (required when true)
        self.layers = (
            layers  # callable(f, n_layers) -> list of bools, or None: mlp_layer_types / all
        )
        self.note = note
        self.hash_layers = hash_layers  # the mlp_layer_types entry of hash-routed layers
        # callable(f, layer_idx) -> {field: value} or None: a layer's settings
        # from legacy fields, for configs without per_layer_config
        self.layer_settings = layer_settings


def _experts_topk(f, layer_idx, experts, top_k):
    return dict(
        num_experts=_per_layer(f, experts, layer_idx), top_k=_per_layer(f, top_k, layer_idx)
    )


def _softmax(experts="num_experts", top_k="num_experts_per_tok", norm=None, scale=None):
    """Softmax top-K; norm: True / False, or None to read norm_topk_prob."""

    def build(f, layer_idx):
        kwargs = _experts_topk(f, layer_idx, experts, top_k)
        kwargs["norm_topk_prob"] = bool(f.get("norm_topk_prob")) if norm is None else norm
        if scale is not None:
            kwargs["routed_scaling_factor"] = _real(f, scale, f.need(scale))
        return kwargs

    return build


def _deepseek_v2(f, layer_idx):
    # DeepseekV2TopkRouter (5.23): softmax; greedy or group_limited_greedy
    # (group score = max probability, dropped groups masked to 0, which the
    # positive probabilities never pick); no renormalisation; then scale.
    method = f.get("topk_method")
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(
            f"{f.model_type} topk_method {method!r} is not supported (greedy, group_limited_greedy)"
        )
    kwargs = _experts_topk(f, layer_idx, "n_routed_experts", "num_experts_per_tok")
    kwargs.update(
        norm_topk_prob=False,
        routed_scaling_factor=_real(f, "routed_scaling_factor", f.get("routed_scaling_factor")),
    )
    if method == "group_limited_greedy":
        kwargs.update(n_group=f.need("n_group"), topk_group=f.need("topk_group"))
    return kwargs


def _mistral4(norm):
    # Mistral4TopkRouter: softmax; group score = sum of the group's 2 best
    # probabilities, dropped groups masked to 0; w = p[S] (+ renormalisation
    # with +1e-20); scale.  With one group the group step is a no-op.
    def build(f, layer_idx):
        n_group = f.integer("n_group", low=1, default=1)
        if n_group != 1:
            raise ValueError(
                f"{f.model_type} with n_group={n_group} scores a group by the sum of its "
                f"two best softmax probabilities, a rule moe_router does not have "
                f"(its softmax groups score by the best probability); n_group=1 is supported"
            )
        kwargs = _experts_topk(f, layer_idx, "n_routed_experts", "num_experts_per_tok")
        kwargs.update(
            norm_topk_prob=bool(f.get("norm_topk_prob")) if norm is None else norm,
            routed_scaling_factor=_real(f, "routed_scaling_factor", f.get("routed_scaling_factor")),
        )
        return kwargs

    return build


def _topk_logits(
    experts="num_local_experts",
    top_k="num_experts_per_tok",
    sigmoid=False,
    norm=False,
    scale_by_top_k=False,
):
    def build(f, layer_idx):
        kwargs = _experts_topk(f, layer_idx, experts, top_k)
        kwargs["topk_on_logits"] = True
        if sigmoid:
            kwargs.update(scoring_func="sigmoid", norm_topk_prob=norm)
        else:
            kwargs["norm_topk_prob"] = True  # a softmax over the K picked logits
        if scale_by_top_k:
            kwargs["routed_scaling_factor"] = 1.0 / f.integer(top_k, low=1)
        return kwargs

    return build


def _cohere2(f, layer_idx):
    # Cohere2MoeTopKRouter: top-K of the logits, then softmax over the K, or
    # sigmoid of each (renormalised if norm_topk_prob).
    fn = f.get("expert_selection_fn")
    if fn == "softmax":
        return _topk_logits("num_experts")(f, layer_idx)
    if fn == "sigmoid":
        norm = bool(f.get("norm_topk_prob"))
        return _topk_logits("num_experts", sigmoid=True, norm=norm)(f, layer_idx)
    raise ValueError(f"cohere2_moe expert_selection_fn must be 'softmax' or 'sigmoid', got {fn!r}")


def _sigmoid(
    experts="n_routed_experts",
    top_k="num_experts_per_tok",
    norm=None,
    scale="routed_scaling_factor",
    groups=True,
):
    """Sigmoid scores (+ correction bias) (+ DeepSeek-V3 groups), renormalised, scaled.

    norm: True / False, or None to read norm_topk_prob; scale: the field of
    the scaling factor, or None for a router that does not scale.
    """

    def build(f, layer_idx):
        kwargs = _experts_topk(f, layer_idx, experts, top_k)
        kwargs.update(
            scoring_func="sigmoid",
            norm_topk_prob=bool(f.get("norm_topk_prob")) if norm is None else norm,
            routed_scaling_factor=1.0 if scale is None else _real(f, scale, f.need(scale)),
        )
        if groups:
            n_group = f.integer("n_group", low=1, default=1)
            if n_group > 1:
                kwargs.update(n_group=n_group, topk_group=f.need("topk_group"))
        return kwargs

    return build


def _axk2(f, layer_idx):
    # AXK2TopkRouter: DeepSeek-V3 routing, but with groups (n_group set) the
    # dropped groups are masked to 0.0, not -inf (its reference does so).
    if f.get("n_group") is not None:
        raise ValueError(
            f"axk2 with n_group={f.get('n_group')} masks the dropped groups' biased scores "
            f"to 0.0 (so they win where the kept ones are negative), a rule moe_router "
            f"does not have; the configs without groups (n_group=None) are supported"
        )
    return _sigmoid(groups=False)(f, layer_idx)


def _inkling2(f, layer_idx):
    # Inkling2TopKRouter: ACT2FN[scoring_func] scores + correction bias,
    # renormalised (+1e-20), scaled by route_scale.
    scoring = f.get("scoring_func")
    if scoring not in ("sigmoid", "sqrtsoftplus"):
        raise ValueError(
            f"inkling2_text scoring_func must be 'sigmoid' or 'sqrtsoftplus', got {scoring!r}"
        )
    kwargs = _sigmoid(scale="route_scale", norm=True, groups=False)(f, layer_idx)
    kwargs["scoring_func"] = scoring
    return kwargs


def _ernie(f, layer_idx):
    # Ernie4_5_MoeTopKRouter: p = softmax(z); S = top-K(p + moe_statics bias);
    # w = p[S] / clamp(sum, min=moe_norm_min).
    kwargs = _experts_topk(f, layer_idx, "num_experts", "num_experts_per_tok")
    kwargs.update(
        norm_topk_prob=True, moe_norm_min=_real(f, "moe_norm_min", f.need("moe_norm_min"))
    )
    return kwargs


def _longcat(f, layer_idx):
    # LongcatFlashTopkRouter: softmax over n_routed_experts + zero_expert_num,
    # S = top-K(p + bias), w = p[S] * routed_scaling_factor (no
    # renormalisation); ids >= n_routed_experts are the identity experts.
    zero = f.integer("zero_expert_num", low=0, default=0)
    kwargs = _experts_topk(f, layer_idx, "n_routed_experts", "moe_topk")
    kwargs["num_experts"] = f.integer("n_routed_experts", low=1) + zero
    kwargs.update(
        norm_topk_prob=False,
        routed_scaling_factor=_real(f, "routed_scaling_factor", f.need("routed_scaling_factor")),
    )
    if zero:
        kwargs["zero_expert_num"] = zero
    return kwargs


def _deepseek_v4(f, layer_idx):
    # DeepseekV4TopKRouter: s = ACT2FN[scoring_func](z); S = top-K(s + bias),
    # w = s[S] / (sum + 1e-20) * routed_scaling_factor.  DeepseekV4HashRouter
    # (mlp_layer_types "hash_moe"): S = tid2eid[input_id], no bias.
    kwargs = _experts_topk(f, layer_idx, "n_routed_experts", "num_experts_per_tok")
    kwargs.update(
        scoring_func=f.need("scoring_func"),
        norm_topk_prob=True,
        routed_scaling_factor=_real(f, "routed_scaling_factor", f.need("routed_scaling_factor")),
    )
    if kwargs["scoring_func"] not in ("sqrtsoftplus", "sigmoid", "softmax"):
        raise ValueError(
            f"deepseek_v4 scoring_func must be 'sqrtsoftplus', 'sigmoid' or 'softmax', "
            f"got {kwargs['scoring_func']!r}"
        )
    return kwargs


def _phimoe(f, layer_idx):
    # PhimoeTopKRouter: sparsemixer top-2 at inference, masking at
    # router_jitter_noise.
    kwargs = _experts_topk(f, layer_idx, "num_local_experts", "num_experts_per_tok")
    kwargs.update(
        scoring_func="sparsemixer",
        norm_topk_prob=False,
        router_jitter_noise=_real(f, "router_jitter_noise", f.need("router_jitter_noise")),
    )
    return kwargs


def _laguna(f, layer_idx):
    # LagunaTopKRouter: z = cap * tanh(z / cap) when cap > 0, then the biased
    # sigmoid top-K, renormalised, unscaled.
    cap = _real(f, "moe_router_logit_softcapping", f.get("moe_router_logit_softcapping"))
    kwargs = _sigmoid("num_experts", norm=True, scale=None, groups=False)(f, layer_idx)
    if cap > 0:
        kwargs["moe_router_logit_softcapping"] = cap
    return kwargs


def _dbrx(f, layer_idx):
    # DbrxFFN.route_tokens_to_experts: softmax, top-K, w /= ||w||_p with
    # p = moe_normalize_expert_weights (None: no normalisation).  The weights
    # are positive, so p = 1 is the plain renormalisation.
    p = f.get("moe_normalize_expert_weights")
    kwargs = _experts_topk(f, layer_idx, "moe_num_experts", "moe_top_k")
    kwargs["norm_topk_prob"] = p is not None
    if p is not None and p != 1:
        kwargs["moe_normalize_expert_weights"] = _real(f, "moe_normalize_expert_weights", p)
    return kwargs


# --- which layers are MoE ---------------------------------------------------


def _first_k_dense(key="first_k_dense_replace", freq=None):
    """The first `key` layers dense (the config class's default if absent);
    `freq`: also dense unless i % moe_layer_freq == 0 (or moe_layer_freq[i])."""

    def layers(f, n):
        k = f.integer(key, default=0)
        every = None
        if freq:
            every = f.get(freq)
            if not isinstance(every, (list, tuple)):
                every = f.integer(freq, low=1)
            elif len(every) < _count(f, n):
                raise ValueError(
                    f"{f.model_type} config field {freq} lists {len(every)} layers, "
                    f"num_hidden_layers is {n}"
                )
        flags = []
        for i in range(_count(f, n)):
            sparse = i >= k
            if every is not None:
                sparse = sparse and (
                    bool(every[i]) if isinstance(every, (list, tuple)) else i % every == 0
                )
            flags.append(sparse)
        return flags

    return layers


def _fixed_dense(k):
    return lambda f, n: [i >= k for i in range(_count(f, n))]


def _count(f, n):
    if n is None:
        raise ValueError(f"{f.model_type} config has no num_hidden_layers")
    return n


def _qwen_layers(f, n):
    # (layer_idx not in mlp_only_layers) and num_experts > 0 and
    # (layer_idx + 1) % decoder_sparse_step == 0
    only = set(f.sequence("mlp_only_layers") or ())
    step = f.integer("decoder_sparse_step", low=1, default=1)
    experts = f.integer("num_experts", default=0)
    return [i not in only and experts > 0 and (i + 1) % step == 0 for i in range(_count(f, n))]


def _jamba_layers(f, n):
    period = f.integer("expert_layer_period", low=1)
    offset = f.integer("expert_layer_offset", low=0)
    experts = f.integer("num_experts", default=0)
    return [experts > 1 and i % period == offset for i in range(_count(f, n))]


def _ernie_layers(f, n):
    start = f.integer("moe_layer_start_index", default=0)
    end = f.integer("moe_layer_end_index")
    n = _count(f, n)
    end = n - 1 if end is None or end == -1 else end
    interval = f.integer("moe_layer_interval", low=1, default=1)
    return [(i + 1) % interval == 0 and start <= i <= end for i in range(n)]


def _llama4_layers(f, n):
    moe = f.sequence("moe_layers")
    if moe is None:
        step = f.integer("interleave_moe_layer_step", low=1, default=1)
        moe = range(step - 1, _count(f, n), step)
    moe = set(moe)
    return [i in moe for i in range(_count(f, n))]


def _nemotron_h_layers(f, n):
    types = f.sequence("layers_block_type")
    if types is None:
        pattern = f.get("hybrid_override_pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise ValueError("nemotron_h config field hybrid_override_pattern must be a string")
        if pattern is None:
            raise ValueError(
                "nemotron_h config has no layers_block_type (nor its alias layer_types)"
            )
        types = ["moe" if c == "E" else "other" for c in pattern]
    return [t == "moe" for t in types]


def _granite_hybrid_layers(f, n):
    return [f.integer("num_local_experts", default=0) > 0] * _count(f, n)


# Dots3NoteVisionConfig: without mlp_layer_types, pyramid_num_routed (one
# count per layer, <= 0 dense) gives the layers and their expert counts.
_DOTS3_PYRAMID = [-1] * 25 + list(range(4, 65, 4)) + [64]


def _dots3_pyramid(f):
    pyramid = f.sequence("pyramid_num_routed")
    if pyramid is None:
        return None if f.has("mlp_layer_types") else _DOTS3_PYRAMID
    return pyramid


def _dots3_vision_layers(f, n):
    pyramid = _dots3_pyramid(f)
    return [] if pyramid is None else [c > 0 for c in pyramid]


def _dots3_vision_layer(f, layer_idx):
    pyramid = _dots3_pyramid(f)
    if pyramid is None or not 0 <= layer_idx < len(pyramid) or pyramid[layer_idx] <= 0:
        return None
    count = pyramid[layer_idx]
    top_k = f.integer("num_experts_per_tok", low=1)
    return {"num_local_experts": count, "num_experts_per_tok": min(top_k, count)}


def _step_layers(f, n):
    enum = f.get("moe_layers_enum")
    if enum is not None:
        items = enum.split(",") if isinstance(enum, str) else f.sequence("moe_layers_enum")
        try:
            moe = {int(i) for i in items}
        except (TypeError, ValueError):
            raise ValueError(
                f"step3p5 config field moe_layers_enum must list layer indices, got {enum!r}"
            ) from None
        return [i in moe for i in range(_count(f, n))]
    freq = f.sequence("moe_layer_freq")
    if freq is not None:
        return [bool(x) for x in freq]
    return [True] * _count(f, n)


_QWEN3 = {"num_experts": ("num_local_experts",), "num_local_experts": ("num_experts",)}
_QWEN_LAYER_DEFAULTS = {"decoder_sparse_step": 1, "mlp_only_layers": []}
_ROUTED = {"n_routed_experts": ("num_local_experts", "num_experts")}
_LOCAL = {"num_local_experts": ("num_experts",)}
_EXPERTS = {"num_experts": ("num_local_experts",)}


def _ds3(norm_default=True, scale=2.5, n_group=1, topk_group=1, **extra):
    return {
        "norm_topk_prob": norm_default,
        "routed_scaling_factor": scale,
        "n_group": n_group,
        "topk_group": topk_group,
        **extra,
    }


PRESETS = {
    # softmax, top-K (Mixtral / Qwen)
    "mixtral": _Spec("softmax", _softmax("num_local_experts", norm=True), _LOCAL),
    "minimax": _Spec("softmax", _softmax("num_local_experts", norm=True), _LOCAL),
    "qwen2_moe": _Spec(
        "softmax",
        _softmax(),
        _EXPERTS,
        {"norm_topk_prob": False, **_QWEN_LAYER_DEFAULTS},
        layers=_qwen_layers,
    ),
    "qwen3_moe": _Spec(
        "softmax",
        _softmax(),
        _QWEN3,
        {"norm_topk_prob": False, **_QWEN_LAYER_DEFAULTS},
        layers=_qwen_layers,
    ),
    "qwen3_next": _Spec(
        "softmax",
        _softmax(),
        _EXPERTS,
        {"norm_topk_prob": True, **_QWEN_LAYER_DEFAULTS},
        layers=_qwen_layers,
    ),
    "qwen3_5_moe_text": _Spec("softmax", _softmax(norm=True), _EXPERTS),
    "qwen3_vl_moe_text": _Spec(
        "softmax", _softmax(norm=True), _QWEN3, _QWEN_LAYER_DEFAULTS, layers=_qwen_layers
    ),
    "qwen3_omni_moe_text": _Spec(
        "softmax",
        _softmax(),
        _EXPERTS,
        {"norm_topk_prob": True, **_QWEN_LAYER_DEFAULTS},
        layers=_qwen_layers,
    ),
    "qwen3_omni_moe_talker_text": _Spec(
        "softmax",
        _softmax(),
        _QWEN3,
        {"norm_topk_prob": False, **_QWEN_LAYER_DEFAULTS},
        layers=_qwen_layers,
    ),
    "qwen4_exp_text": _Spec("softmax", _softmax(), _EXPERTS, {"norm_topk_prob": True}),
    "olmoe": _Spec("softmax", _softmax(), _EXPERTS, {"norm_topk_prob": False}),
    "flex_olmo": _Spec("softmax", _softmax(), _EXPERTS, {"norm_topk_prob": False}),
    "mellum": _Spec("softmax", _softmax(), _QWEN3, {"norm_topk_prob": True}),
    "hunyuan_v1_moe": _Spec(
        "softmax",
        _softmax(top_k="moe_topk", norm=True),
        {"num_experts": ("num_local_experts",), "moe_topk": ("num_experts_per_tok",)},
    ),
    "jamba": _Spec(
        "softmax",
        _softmax(norm=False),
        _EXPERTS,
        {"expert_layer_period": 2, "expert_layer_offset": 1},
        layers=_jamba_layers,
    ),
    "dbrx": _Spec("softmax", _dbrx, defaults={"moe_normalize_expert_weights": 1.0}),
    "mistral4": _Spec(
        "softmax",
        _mistral4(None),
        _ROUTED,
        {"norm_topk_prob": True, "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1},
        layers=_first_k_dense(),
    ),
    "mistral_large4_text": _Spec(
        "softmax",
        _mistral4(True),
        _ROUTED,
        {"routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1},
        layers=_first_k_dense(),
    ),
    # softmax, group-limited (DeepSeek-V2)
    "deepseek_v2": _Spec(
        "softmax_grouped",
        _deepseek_v2,
        {"n_routed_experts": ("num_experts",)},
        {"routed_scaling_factor": 1.0, "topk_method": "greedy", "first_k_dense_replace": 0},
        layers=_first_k_dense(),
    ),
    "deepseek_ocr2_text": _Spec(
        "softmax_grouped",
        _deepseek_v2,
        {"n_routed_experts": ("num_experts",)},
        {"routed_scaling_factor": 1.0, "topk_method": "greedy"},
    ),
    "unlimited_ocr_text": _Spec(
        "softmax_grouped",
        _deepseek_v2,
        {"n_routed_experts": ("num_experts",)},
        {"routed_scaling_factor": 1.0, "topk_method": "greedy", "first_k_dense_replace": 1},
        layers=_first_k_dense(),
    ),
    # top-K of the logits, softmax over the K (gpt-oss / Granite / JetMoE)
    "gpt_oss": _Spec(
        "topk_logits_softmax",
        _topk_logits(),
        {**_LOCAL, "num_experts_per_tok": ("experts_per_token",)},
    ),
    "granitemoe": _Spec("topk_logits_softmax", _topk_logits()),
    "granitemoe_swa": _Spec("topk_logits_softmax", _topk_logits()),
    "granitemoeshared": _Spec("topk_logits_softmax", _topk_logits()),
    "granitemoehybrid": _Spec("topk_logits_softmax", _topk_logits(), layers=_granite_hybrid_layers),
    "jetmoe": _Spec("topk_logits_softmax", _topk_logits()),
    "aria_text": _Spec("topk_logits_softmax", _topk_logits("moe_num_experts", "moe_topk")),
    "openai_privacy_filter": _Spec(
        "topk_logits_softmax", _topk_logits(scale_by_top_k=True), _LOCAL
    ),
    "cohere2_moe": _Spec(
        "topk_logits_softmax",
        _cohere2,
        defaults={"expert_selection_fn": "softmax", "norm_topk_prob": True},
        layers=_first_k_dense(),
        note="expert_selection_fn='sigmoid': top-K of the logits, sigmoid of each",
    ),
    # top-K of the logits, sigmoid of each (Llama 4)
    "llama4_text": _Spec(
        "topk_logits_sigmoid",
        _topk_logits(sigmoid=True),
        defaults={"interleave_moe_layer_step": 1},
        layers=_llama4_layers,
    ),
    # sigmoid (+ correction bias) (+ groups) (DeepSeek-V3 and its kin)
    "deepseek_v3": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(n_group=8, topk_group=4, first_k_dense_replace=3),
        bias="required",
        layers=_first_k_dense(),
    ),
    "deepseek_v32": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(n_group=8, topk_group=4, first_k_dense_replace=3),
        bias="required",
        layers=_first_k_dense(),
    ),
    "glm4_moe": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(scale=1.0, first_k_dense_replace=1),
        bias="required",
        layers=_first_k_dense(),
    ),
    "glm4v_moe_text": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(scale=1.0, first_k_dense_replace=1),
        bias="required",
        layers=_first_k_dense(),
    ),
    "glm4_moe_lite": _Spec(
        "sigmoid", _sigmoid(), _ROUTED, _ds3(scale=1.8), bias="required", layers=_fixed_dense(1)
    ),
    "glm5_next_text": _Spec(
        "sigmoid", _sigmoid(), _ROUTED, _ds3(), bias="required", layers=_fixed_dense(3)
    ),
    "glm_moe_dsa": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(first_k_dense_replace=3),
        bias="required",
        layers=_first_k_dense(),
    ),
    "axk1": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(n_group=8, topk_group=4, first_k_dense_replace=1, moe_layer_freq=1),
        bias="required",
        layers=_first_k_dense(freq="moe_layer_freq"),
    ),
    "axk2": _Spec(
        "sigmoid",
        _axk2,
        _ROUTED,
        _ds3(n_group=None, topk_group=None, first_k_dense_replace=1, moe_layer_freq=1),
        bias="required",
        layers=_first_k_dense(freq="moe_layer_freq"),
        note="n_group=None only (grouped configs mask dropped groups to 0.0)",
    ),
    "bailing_hybrid": _Spec(
        "sigmoid",
        _sigmoid("num_experts"),
        {
            "num_experts": ("num_local_experts",),
            "num_experts_per_tok": ("num_experts_per_token",),
            "norm_topk_prob": ("moe_renormalize",),
            "n_group": ("num_expert_group",),
        },
        _ds3(n_group=8, topk_group=4, first_k_dense_replace=2),
        bias="required",
        layers=_first_k_dense(),
    ),
    "kimi_linear": _Spec(
        "sigmoid",
        _sigmoid("num_experts"),
        {
            "num_experts": ("num_local_experts",),
            "num_experts_per_tok": ("num_experts_per_token",),
            "norm_topk_prob": ("moe_renormalize",),
            "n_group": ("num_expert_group",),
        },
        _ds3(scale=2.446, first_k_dense_replace=1),
        bias="required",
        layers=_first_k_dense(),
    ),
    "dots1": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(norm_default=False, scale=1.0, first_k_dense_replace=0),
        bias="required",
        layers=_first_k_dense(),
    ),
    "dots3_note_text": _Spec(
        "sigmoid",
        _sigmoid(),
        _ROUTED,
        _ds3(scale=1.0, first_k_dense_replace=1, moe_layer_freq=1),
        bias="required",
        layers=_first_k_dense(freq="moe_layer_freq"),
    ),
    "dots3_note_vision_encoder": _Spec(
        "sigmoid",
        _sigmoid("num_local_experts", norm=True, scale="router_scaling_factor", groups=False),
        defaults={"router_scaling_factor": 1.0, "num_experts_per_tok": 2},
        bias="required",
        note="the vision tower's MoE (a dots3_note's vision_config); expert counts per layer",
        layers=_dots3_vision_layers,
        layer_settings=_dots3_vision_layer,
    ),
    "exaone_moe": _Spec(
        "sigmoid",
        _sigmoid("num_experts"),
        _EXPERTS,
        _ds3(first_k_dense_replace=1),
        bias="required",
        layers=_first_k_dense(),
    ),
    "hy_v4": _Spec(
        "sigmoid", _sigmoid(), _ROUTED, _ds3(scale=2.827), bias="required", layers=_fixed_dense(1)
    ),
    "mimo_v2_flash": _Spec(
        "sigmoid", _sigmoid(), _ROUTED, _ds3(scale=1.0), bias="required", layers=_fixed_dense(1)
    ),
    "nemotron_h": _Spec(
        "sigmoid",
        _sigmoid(),
        {**_ROUTED, "layers_block_type": ("layer_types",)},
        _ds3(scale=1.0),
        bias="required",
        layers=_nemotron_h_layers,
    ),
    "solar_open": _Spec("sigmoid", _sigmoid(), _ROUTED, _ds3(scale=1.0), bias="required"),
    "beam": _Spec(
        "sigmoid",
        _sigmoid("num_experts", scale=None),
        defaults=_ds3(n_group=8, topk_group=4),
        bias="required",
        layers=_fixed_dense(3),
        note="routed_scaling_factor is applied by BeamMoE after the experts, not by the router",
    ),
    "afmoe": _Spec(
        "sigmoid",
        _sigmoid("num_experts", norm=True, scale="route_scale", groups=False),
        defaults={"route_scale": 1.0, "num_dense_layers": 1},
        bias="required",
        layers=_first_k_dense("num_dense_layers"),
    ),
    "minimax_m2": _Spec(
        "sigmoid",
        _sigmoid("num_local_experts", norm=True, scale=None, groups=False),
        _LOCAL,
        bias="required",
    ),
    "minimax_m3_vl_text": _Spec(
        "sigmoid",
        _sigmoid("num_local_experts", norm=True, scale=None, groups=False),
        _LOCAL,
        bias="required",
        layers=lambda f, n: [bool(x) for x in (f.sequence("moe_layer_freq") or [1] * _count(f, n))],
        note="routed_scaling_factor is applied by the experts, not by the router",
    ),
    "step3p5": _Spec(
        "sigmoid",
        _sigmoid("n_routed_experts", norm=True, scale=None, groups=False),
        {
            "n_routed_experts": ("num_local_experts", "moe_num_experts"),
            "num_experts_per_tok": ("moe_top_k",),
        },
        bias="required",
        layers=_step_layers,
        note="moe_router_scaling_factor is applied by the experts, not by the router",
    ),
    "hy_v3": _Spec(
        "sigmoid",
        _sigmoid("num_experts", norm=True, scale="router_scaling_factor", groups=False),
        _EXPERTS,
        {"router_scaling_factor": 2.826},
        bias="required",
        layers=_fixed_dense(1),
    ),
    "muse_spark_text": _Spec(
        "sigmoid",
        _sigmoid("num_local_experts", norm=True, groups=False),
        defaults={"routed_scaling_factor": 1.0},
        bias="required",
        note="the router multiplies its logits by output_multiplier: pass the multiplied logits",
    ),
    "inkling2_text": _Spec(
        "sigmoid",
        _inkling2,
        {"n_routed_experts": ("num_local_experts",), "route_scale": ("routed_scaling_factor",)},
        {"route_scale": 8.0, "scoring_func": "sigmoid"},
        bias="required",
    ),
    "laguna": _Spec(
        "sigmoid",
        _laguna,
        defaults={"moe_router_logit_softcapping": 0.0},
        bias="required",
        layers=_fixed_dense(1),
        note="its router returns the logits after soft-capping: pass the ones before; "
        "moe_routed_scaling_factor is applied by the experts",
    ),
    "ernie4_5_moe": _Spec(
        "softmax_biased",
        _ernie,
        {"num_experts": ("moe_num_experts",), "num_experts_per_tok": ("moe_k",)},
        {
            "moe_norm_min": 1e-12,
            "moe_layer_start_index": 1,
            "moe_layer_end_index": -1,
            "moe_layer_interval": 1,
        },
        bias="required",
        layers=_ernie_layers,
        note="the bias is the gate's moe_statics.e_score_correction_bias",
    ),
    "ernie4_5_vl_moe_text": _Spec(
        "softmax_biased",
        _ernie,
        {"num_experts": ("moe_num_experts",), "num_experts_per_tok": ("moe_k",)},
        {"moe_norm_min": 1e-12},
        bias="required",
        layers=_fixed_dense(1),
        note="one Router for the text and the vision experts' gates (same shape)",
    ),
    "longcat_flash": _Spec(
        "softmax_biased",
        _longcat,
        {"n_routed_experts": ("num_local_experts",), "moe_topk": ("num_experts_per_tok",)},
        {"routed_scaling_factor": 6.0},
        bias="required",
        note="ranks n_routed_experts + zero_expert_num; identity_expert_start marks the "
        "zero-computation experts",
    ),
    "deepseek_v4": _Spec(
        "sqrtsoftplus",
        _deepseek_v4,
        _ROUTED,
        {"scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5},
        bias="required",
        note="hash layers (mlp_layer_types 'hash_moe'): layer_idx= and tid2eid=",
        hash_layers="hash_moe",
    ),
    "phimoe": _Spec("sparsemixer", _phimoe, defaults={"router_jitter_noise": 0.01}),
    "flint": _Spec(
        "sigmoid",
        _sigmoid("num_experts", scale=None, groups=False),
        defaults={"norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [0, 1]},
        layers=_qwen_layers,
    ),
    "lfm2_moe": _Spec(
        "sigmoid",
        _sigmoid("num_experts", groups=False),
        defaults={
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
            "use_expert_bias": True,
            "num_dense_layers": 2,
        },
        bias=lambda f: bool(f.get("use_expert_bias")),
        layers=_first_k_dense("num_dense_layers"),
        note="renormalises with +1e-6 (moe_router: +1e-20)",
    ),
}


# Multimodal / composite configs: the MoE model is a sub-config.
NESTED = {
    "llama4": ("text_config", "llama4_text"),
    "aria": ("text_config", "aria_text"),
    "qwen3_5_moe": ("text_config", "qwen3_5_moe_text"),
    "qwen3_vl_moe": ("text_config", "qwen3_vl_moe_text"),
    "qwen3_omni_moe": ("thinker_config", "qwen3_omni_moe_thinker"),
    "qwen3_omni_moe_thinker": ("text_config", "qwen3_omni_moe_text"),
    "qwen4_exp": ("text_config", "qwen4_exp_text"),
    "glm4v_moe": ("text_config", "glm4v_moe_text"),
    "glm5_next": ("text_config", "glm5_next_text"),
    "ernie4_5_vl_moe": ("text_config", "ernie4_5_vl_moe_text"),
    "minimax_m3_vl": ("text_config", "minimax_m3_vl_text"),
    "mistral_large4": ("text_config", "mistral_large4_text"),
    "muse_spark": ("text_config", "muse_spark_text"),
    "step3p7": ("text_config", "step3p5"),
    "dots3_note": ("text_config", "dots3_note_text"),
    "inkling_mm_model": ("text_config", "inkling_text"),
    "inkling2": ("text_config", "inkling2_text"),
    "deepseek_ocr2": ("text_config", "deepseek_ocr2_text"),
    "unlimited_ocr": ("text_config", "unlimited_ocr_text"),
    "gemma4": ("text_config", "gemma4_text"),
    "diffusion_gemma": ("text_config", "diffusion_gemma_text"),
}

# Configs whose MoE fields sit in a sub-dict of the model's config.
SUBCONFIG = {"dbrx": "ffn_config"}

# Model types with experts but no preset, and why (the README's table).
UNSUPPORTED = {
    "zaya": "ranks num_experts + 1 classes (the last a skip expert whose weight the router "
    "zeroes, not an identity expert): route with Router(num_experts + 1, top_k, "
    "norm_topk_prob=False, e_score_correction_bias=balancing_biases) and drop id num_experts",
    "kolibri1": "top-K of the logits plus a correction bias, then sigmoid of the picked logits: "
    "moe_router's top-K on logits takes no bias",
    "gemma4_text": "a learned per-expert scale (per_expert_scale) multiplies the renormalised "
    "softmax weights: route with Router(num_experts, top_k_experts) and multiply "
    "weights by per_expert_scale[ids]",
    "diffusion_gemma_text": "a learned per-expert scale (per_expert_scale) multiplies the "
    "renormalised softmax weights: route with Router(num_experts, top_k_experts) and multiply "
    "weights by per_expert_scale[ids]",
    "inkling_text": "the weights are a softmax of log-sigmoids over the K picked and the shared "
    "experts' logits together: not a top-K weight rule moe_router has",
    "doge": "product-key routing (two half-size logit sets combined, top-K of their sums): not a "
    "top-K over per-token expert scores",
    "nllb-moe": "top-2 with expert capacity (tokens dropped by batch position) and a random or "
    "sampled second expert: depends on the whole batch and on random draws",
    "switch_transformers": "top-1 with expert capacity (tokens dropped by batch position) and "
    "training-time jitter: depends on the whole batch",
    "vitpose_backbone": "experts chosen by the dataset index passed in, not by a router",
}


# --- the public functions ---------------------------------------------------


def presets():
    """The supported model types, each with the variant (README table row) it maps to."""
    return {model_type: spec.variant for model_type, spec in sorted(PRESETS.items())}


def unsupported():
    """Model types with experts but no preset, each with the reason."""
    return dict(sorted(UNSUPPORTED.items()))


def _raw_get(config, key):
    if isinstance(config, dict):
        return config.get(key, None)
    return getattr(config, key, None)


def _resolve(config):
    """(model_type, the config holding its MoE fields), descending into sub-configs."""
    if not isinstance(config, dict) and not hasattr(config, "model_type"):
        raise TypeError(
            f"config must be a dict (a config.json) or a config object with a model_type, "
            f"got {type(config).__name__}"
        )
    model_type = _raw_get(config, "model_type")
    seen = 0
    while model_type in NESTED and seen < 4:
        key, inner_type = NESTED[model_type]
        inner = _raw_get(config, key)
        if inner is None:
            raise ValueError(f"{model_type} config has no {key}")
        config, model_type = inner, (_raw_get(inner, "model_type") or inner_type)
        seen += 1
    if model_type not in PRESETS and model_type not in UNSUPPORTED:
        # a multimodal wrapper this table does not name, around a known text model
        inner = _raw_get(config, "text_config")
        if inner is not None and _raw_get(inner, "model_type") in PRESETS:
            config, model_type = inner, _raw_get(inner, "model_type")
    if model_type in SUBCONFIG:
        outer = config
        sub = _raw_get(config, SUBCONFIG[model_type])
        if sub is None:
            raise ValueError(f"{model_type} config has no {SUBCONFIG[model_type]}")
        return model_type, sub, outer
    return model_type, config, config


def _spec(model_type):
    if model_type in PRESETS:
        return PRESETS[model_type]
    if model_type in UNSUPPORTED:
        raise ValueError(
            f"model_type {model_type!r} has no moe_router preset: {UNSUPPORTED[model_type]}"
        )
    wrappers = sorted(outer for outer in NESTED if _inner_type(outer) in PRESETS)
    known = sorted(PRESETS) + wrappers + sorted(UNSUPPORTED)
    close = difflib.get_close_matches(str(model_type), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"model_type {model_type!r} is not a MoE model moe_router knows.{hint} "
        f"Supported: {', '.join(sorted(PRESETS))} (and the multimodal configs "
        f"{', '.join(wrappers)}, read through their text config); "
        f"or build a Router(...) directly"
    )


def _inner_type(model_type):
    while model_type in NESTED:
        model_type = NESTED[model_type][1]
    return model_type


def _num_layers(f, outer):
    for source in (f, _Fields(outer, f.model_type)):
        for key in ("num_hidden_layers", "n_layers", "num_layers"):
            n = source.integer(key, low=0)
            if n is not None:
                return n
    return None  # some configs (Nemotron-H) count their layers by a per-layer list


def _moe_flags(spec, f, outer):
    n = _num_layers(f, outer)
    types = f.sequence("mlp_layer_types")
    if types is not None:
        flags = [t != "dense" for t in types]
    elif spec.layers is None:
        if n is None:
            raise ValueError(f"{f.model_type} config has no num_hidden_layers")
        flags = [True] * n
    else:
        flags = list(spec.layers(f, n))
    return flags if n is None else flags[:n]


def moe_layers(config):
    """The indices of the MoE layers of a model config (dict or config object)."""
    model_type, sub, outer = _resolve(config)
    spec = _spec(model_type)
    f = _Fields(sub, model_type, spec.aliases, spec.defaults)
    return [i for i, moe in enumerate(_moe_flags(spec, f, outer)) if moe]


def _at_layer(spec, f, layer_idx):
    g = f.at_layer(layer_idx)
    if g is f and spec.layer_settings is not None:
        settings = spec.layer_settings(f, layer_idx)
        if settings:
            g = _Fields(f.raw, f.model_type, f.aliases, f.defaults, settings)
    return g


def router_kwargs_from_config(config, e_score_correction_bias=None, layer_idx=None, overrides=None):
    """Router keywords for `config` (dict or attribute object), at layer `layer_idx`,
    with the caller's `overrides` (Router keywords) applied."""
    overrides = dict(overrides or {})
    model_type, sub, outer = _resolve(config)
    spec = _spec(model_type)
    f = _Fields(sub, model_type, spec.aliases, spec.defaults)
    if layer_idx is not None:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, numbers.Integral):
            raise TypeError(f"layer_idx must be an int, got {type(layer_idx).__name__}")
        layer_idx = int(layer_idx)
        flags = _moe_flags(spec, f, outer)
        if not 0 <= layer_idx < len(flags):
            raise ValueError(
                f"layer_idx={layer_idx} is out of range: {model_type} has {len(flags)} layers"
            )
        if not flags[layer_idx]:
            moe = [i for i, m in enumerate(flags) if m]
            shown = moe if len(moe) <= 12 else moe[:6] + ["..."] + moe[-3:]
            raise ValueError(
                f"layer {layer_idx} of this {model_type} config is a dense MLP, not MoE "
                f"(MoE layers: {shown})"
            )
    if layer_idx is not None:
        f = _at_layer(spec, f, layer_idx)
    elif f.has_per_layer() or spec.layer_settings is not None:
        # settings per layer (per_layer_config): one Router only if they agree
        moe = [i for i, m in enumerate(_moe_flags(spec, f, outer)) if m]
        seen = {repr(sorted(spec.build(_at_layer(spec, f, i), i).items())) for i in moe}
        if len(seen) > 1:
            shown = moe if len(moe) <= 12 else moe[:6] + ["..."] + moe[-3:]
            raise ValueError(
                f"this {model_type} config sets its MoE layers' settings per layer "
                f"(per_layer_config): pass Router.from_hf_config(config, layer_idx=...) "
                f"(MoE layers: {shown})"
            )
    kwargs = spec.build(f, layer_idx)
    needs_bias = spec.bias == "required" or (callable(spec.bias) and spec.bias(f))
    if spec.hash_layers is not None:
        types = f.sequence("mlp_layer_types")
        hashed = (
            overrides.get("tid2eid") is not None
            if layer_idx is None or types is None
            else types[layer_idx] == spec.hash_layers
        )
        if hashed:
            # the hash router takes S from tid2eid[input_id] and has no bias
            needs_bias = False
            if overrides.get("tid2eid") is None:
                raise ValueError(
                    f"layer {layer_idx} of this {model_type} config is hash-routed "
                    f"(mlp_layer_types {spec.hash_layers!r}): pass its table, "
                    f"Router.from_hf_config(config, layer_idx={layer_idx}, tid2eid=...), "
                    f"and route with input_ids="
                )
        elif overrides.get("tid2eid") is not None:
            raise ValueError(
                f"layer {layer_idx} of this {model_type} config is not hash-routed: "
                f"it takes no tid2eid"
            )
    if needs_bias and e_score_correction_bias is None:
        raise ValueError(
            f"{model_type} routes with a correction bias (e_score_correction_bias), a weight "
            f"of the gate, not a config field: pass "
            f"Router.from_hf_config(config, e_score_correction_bias=...)"
        )
    if not needs_bias and e_score_correction_bias is not None:
        raise ValueError(f"{model_type} has no e_score_correction_bias")
    if needs_bias:
        kwargs["e_score_correction_bias"] = e_score_correction_bias
    kwargs.update(overrides)
    return kwargs
