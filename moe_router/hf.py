"""transformers integration: a `"moe_router"` experts implementation and router replacement.

    import moe_router.hf                      # registers "moe_router" (imports transformers)
    model = AutoModelForCausalLM.from_pretrained(name, experts_implementation="moe_router")
    moe_router.hf.replace_routers(model)      # the gates route with moe_router too

    moe_router.hf.apply(model)                # both, on a loaded model (and Llama 4's MoE blocks)

The experts implementation is plan -> permute -> the expert matmuls (torch,
one per active expert on its contiguous rows of the 3-D weights) -> combine.
It honours what the experts classes declare (has_gate, has_bias,
is_transposed, _apply_gate such as gpt-oss's clamped interleaved gate,
has_post_expert_norm, the expert-parallel sentinel ids >= num_experts).
Nothing here is imported by `import moe_router`; this module imports torch
and transformers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _plan
from ._api import Router

__all__ = ["NAME", "register", "experts_forward", "replace_routers", "apply", "MoeRouterGate"]

NAME = "moe_router"


def _plan_of(module, top_k_index):
    """The module's reused DispatchPlan of this call's ids."""
    p = module.__dict__.get("_moe_router_plan")
    if p is None:
        p = module.__dict__["_moe_router_plan"] = _plan.DispatchPlan.empty()
    E = module.num_experts
    if getattr(module, "_is_expert_parallel", False):
        # EP sentinels (ids >= num_experts, other ranks' slots): one extra id
        # that the expert_map sends nowhere, so they take no rows and add nothing.
        ids = top_k_index.clamp(max=E)
        emap = module.__dict__.get("_moe_router_ep_map")
        if emap is None or emap.size != E + 1:
            emap = module.__dict__["_moe_router_ep_map"] = np.append(np.arange(E), -1)
        return _plan.plan_into(ids, E + 1, p, expert_map=emap)
    return _plan.plan_into(top_k_index, E, p)


_grouped_mm = getattr(torch.nn.functional, "grouped_mm", None) or getattr(
    torch, "_grouped_mm", None
)


def _segments(x, weight, bias, p, is_transposed):
    """Each active expert's rows times its weight: [num_rows, out].

    One grouped matmul over the plan's segments where torch has one (its
    int32 offsets are the ends of the experts' segments), else one matmul
    per active expert.
    """
    if bias is None and _grouped_mm is not None and x.dtype == weight.dtype:
        ends = torch.from_numpy(p.expert_offsets[1:].astype(np.int32))
        return _grouped_mm(x, weight if is_transposed else weight.transpose(-2, -1), offs=ends)
    out_dim = weight.shape[-1] if is_transposed else weight.shape[-2]
    y = x.new_empty((x.shape[0], out_dim))
    offsets = p.expert_offsets
    for e in p.active_experts.tolist():
        s, t = int(offsets[e]), int(offsets[e + 1])
        w = weight[e] if is_transposed else weight[e].t()
        torch.mm(x[s:t], w, out=y[s:t])
        if bias is not None:
            y[s:t] += bias[e]
    return y


def _run_experts(module, x, p, up_weight, up_bias):
    t = module.is_transposed
    h = _segments(x, up_weight, up_bias, p, t)
    h = module._apply_gate(h) if module.has_gate else module.act_fn(h)
    down_bias = module.down_proj_bias if module.has_bias else None
    out = _segments(h, module.down_proj, down_bias, p, t)
    if module.has_post_expert_norm:
        out = module.post_expert_norm(out)
    return out


def experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The "moe_router" experts forward: (hidden [T, H], ids [T, K], weights [T, K]) -> [T, H]."""
    p = _plan_of(module, top_k_index)
    x = _plan.permute(hidden_states, p)
    if module.has_gate:
        up_w = module.gate_up_proj
        up_b = module.gate_up_proj_bias if module.has_bias else None
    else:
        up_w = module.up_proj
        up_b = module.up_proj_bias if module.has_bias else None
    out = _run_experts(module, x, p, up_w, up_b)
    y = _plan.combine(out.contiguous(), p, top_k_weights)
    return y.to(hidden_states.dtype)


def register():
    """Register "moe_router" with transformers' ExpertsInterface (idempotent)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, experts_forward)


# --- routers ------------------------------------------------------------------


def _contract(gate):
    """How a gate module's outputs look: the model family of its forward."""
    name = type(gate).__name__
    if name == "Llama4Router":
        return "llama4"
    if name in ("DeepseekV3TopkRouter", "Glm4MoeTopkRouter"):
        return "sigmoid_groups"
    if name == "GptOssTopKRouter":
        return "gpt_oss"
    if name in ("Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter", "MixtralTopKRouter", "OlmoeTopKRouter"):
        return "softmax"
    return None


class MoeRouterGate(nn.Module):
    """A model's gate with the routing done by a moe_router Router.

    Computes the gate's logits with the original weights (and bias), routes
    them with `Router.from_hf_config`, and returns what the original returned:
    (logits, weights [T, K], ids [T, K] int64) for the top-K routers, and
    (dense scores [T, E], logits) for Llama 4's.  It holds the original's
    parameters under the same names (`weight`, `bias`,
    `e_score_correction_bias`), so the model's state_dict keys are unchanged;
    the Router reads the correction bias once, when the gate is replaced
    (replace after loading the weights).  Inference only: the weights it
    returns carry no gradient.
    """

    def __init__(self, gate, config):
        super().__init__()
        self.contract = _contract(gate)
        if self.contract is None:
            raise ValueError(f"no moe_router replacement for {type(gate).__name__}")
        self.original_type = type(gate).__name__
        self.weight = gate.weight
        self.bias = getattr(gate, "bias", None)
        bias = None
        if self.contract == "sigmoid_groups":
            self.register_buffer("e_score_correction_bias", gate.e_score_correction_bias)
            bias = gate.e_score_correction_bias.detach().float().cpu().numpy()
        self.router = Router.from_hf_config(
            config, e_score_correction_bias=bias, ids_dtype=np.int64
        )
        self.top_k = self.router.top_k
        self.num_experts = self.router.num_experts

    def route(self, hidden_states):
        """(logits, ids [T, K] int64, weights [T, K] float32)."""
        h = hidden_states.reshape(-1, hidden_states.shape[-1])
        if self.contract == "sigmoid_groups":
            logits = F.linear(h.float(), self.weight.float())
        else:
            logits = F.linear(h, self.weight, self.bias)
        out = self.router(logits.detach())
        # The Router reuses its buffers: copies keep earlier results valid.
        return logits, out.expert_ids.clone(), out.expert_weights.clone()

    def forward(self, hidden_states):
        logits, ids, weights = self.route(hidden_states)
        if self.contract == "llama4":
            scores = torch.zeros_like(logits).scatter_(1, ids, weights.to(logits.dtype))
            return scores, logits
        if self.contract == "sigmoid_groups":
            return logits, weights, ids
        return logits, weights.to(logits.dtype), ids


def replace_routers(model) -> int:
    """Replace each MoE gate (`.gate` / `.router` of the MoE blocks) of a loaded
    model by a MoeRouterGate; returns how many were replaced."""
    config = getattr(model.config, "get_text_config", lambda: model.config)()
    n = 0
    for block in list(model.modules()):
        for attr in ("gate", "router"):
            gate = getattr(block, attr, None)
            if isinstance(gate, nn.Module) and _contract(gate) is not None:
                setattr(block, attr, MoeRouterGate(gate, config))
                n += 1
    return n


def _llama4_moe_forward(self, hidden_states):
    # Llama4TextMoe: sigmoid weights applied to the experts' input, a plain sum after.
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    if isinstance(self.router, MoeRouterGate):
        logits, ids, weights = self.router.route(hidden_states)
    else:
        scores, logits = self.router(hidden_states)
        ids = torch.topk(logits, self.top_k, dim=1).indices
        weights = scores.gather(1, ids)
    p = self.__dict__.get("_moe_router_plan")
    if p is None:
        p = self.__dict__["_moe_router_plan"] = _plan.DispatchPlan.empty()
    _plan.plan_into(ids, self.num_experts, p)
    x = _plan.permute(hidden_states, p, scale_by=weights.to(hidden_states.dtype))
    experts = self.experts
    gate_up = _segments(x, experts.gate_up_proj, None, p, True)
    gate, up = gate_up.chunk(2, dim=-1)
    out = _segments(up * experts.act_fn(gate), experts.down_proj, None, p, True)
    routed = _plan.combine(out.contiguous(), p, None)
    shared = self.shared_expert(hidden_states)
    shared.add_(routed)
    return shared, logits


def apply(model, routers: bool = True):
    """Run a loaded model's MoE layers on moe_router: register and select the
    "moe_router" experts implementation, replace the routers (routers=True),
    and give Llama 4's MoE blocks the plan / permute / combine forward.
    Returns the model."""
    register()
    if model._can_set_experts_implementation():
        model.set_experts_implementation(NAME)
    if routers:
        replace_routers(model)
    for block in model.modules():
        if type(block).__name__ == "Llama4TextMoe":
            block.forward = _llama4_moe_forward.__get__(block)
    return model


register()
