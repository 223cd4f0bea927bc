"""Presets against their model's own transformers router module, timed interleaved.

    python benchmarks/bench_presets_hf.py [--rounds 30] [--batch 256 1]

For a few model types at their real expert counts: the transformers 5.23
router module (the oracle of tests/test_presets_hf.py) and
`Router.from_hf_config(config)` on the same logits, one thread each.  Both
time the scoring only: the gate's matmul is taken out of the module by
making `torch.nn.functional.linear` the identity for this process (hidden
size = number of experts, the hidden states are the logits).  Every round
times each contender once, in turn, so a drifting host hits them alike; the
ratio is of the minima over rounds (the medians are printed for spread).
"""

import argparse
import importlib
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ratios import interleaved  # noqa: E402

# model_type: (modeling module, router class, config fields, how it is called)
SHAPES = {
    "qwen3_moe": (
        "qwen3_moe", "Qwen3MoeTopKRouter", dict(num_experts=128, num_experts_per_tok=8), ""
    ),
    "deepseek_v3": (
        "deepseek_v3", "DeepseekV3TopkRouter",
        dict(n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4), "",
    ),
    "gpt_oss": (
        "gpt_oss", "GptOssTopKRouter", dict(num_local_experts=128, num_experts_per_tok=4), ""
    ),
    "minimax_m2": (
        "minimax_m2", "MiniMaxM2TopKRouter",
        dict(num_local_experts=256, num_experts_per_tok=8), "bias_arg",
    ),
    "ernie4_5_moe": (
        "ernie4_5_moe", "Ernie4_5_MoeTopKRouter", dict(moe_num_experts=64, moe_k=6), ""
    ),
    "longcat_flash": (
        "longcat_flash", "LongcatFlashTopkRouter",
        dict(n_routed_experts=512, zero_expert_num=256, moe_topk=12), "",
    ),
    "deepseek_v4": (
        "deepseek_v4", "DeepseekV4TopKRouter",
        dict(n_routed_experts=256, num_experts_per_tok=6), "",
    ),
    "laguna": (
        "laguna", "LagunaTopKRouter",
        dict(num_experts=256, num_experts_per_tok=8, moe_router_logit_softcapping=30.0), "",
    ),
    "phimoe": (
        "phimoe", "PhimoeTopKRouter", dict(num_local_experts=16, num_experts_per_tok=2), ""
    ),
}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    parser.add_argument("--only", nargs="+", choices=sorted(SHAPES))
    args = parser.parse_args()
    import torch
    from transformers import AutoConfig

    torch.set_num_threads(1)
    identity = lambda x, weight, bias=None: x  # noqa: E731  (the hidden states are the logits)
    torch.nn.functional.linear = identity
    gen = torch.Generator().manual_seed(0)
    print(f"moe_router {mr.__version__}; one thread; {args.rounds} interleaved rounds")
    head = ("model type", "batch", "experts", "K", "transformers", "moe_router", "ratio")
    print("{:14s} {:>5s} {:>7s} {:>3s} {:>14s} {:>12s} {:>7s}".format(*head))
    for model_type in args.only or SHAPES:
        module_name, cls_name, fields, call = SHAPES[model_type]
        modeling = importlib.import_module(
            f"transformers.models.{module_name}.modeling_{module_name}"
        )
        num_experts = (
            fields.get("num_experts")
            or fields.get("num_local_experts")
            or fields.get("moe_num_experts")
            or fields["n_routed_experts"] + fields.get("zero_expert_num", 0)
        )
        config = AutoConfig.for_model(
            model_type,
            hidden_size=num_experts,
            num_attention_heads=2,
            num_key_value_heads=2,
            **fields,
        )
        module = getattr(modeling, cls_name)(config).eval()
        bias = None
        with torch.no_grad():
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if name.endswith("e_score_correction_bias"):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
                    bias = t.reshape(-1).numpy().copy()
            if call == "bias_arg":
                arg = torch.randn(num_experts, generator=gen) * 0.1
                bias = arg.numpy().copy()
        router = mr.Router.from_hf_config(config, e_score_correction_bias=bias, num_threads=1)
        for batch in args.batch:
            x = torch.randn(batch, num_experts, generator=gen) * 2
            z = np.ascontiguousarray(x.numpy())
            with torch.no_grad():
                if call == "bias_arg":
                    torch_fn = lambda: module(x, arg)  # noqa: E731
                else:
                    torch_fn = lambda: module(x)  # noqa: E731
                result = interleaved(
                    {"transformers": torch_fn, "moe_router": lambda: router(z)}, args.rounds
                )
            hf, ours = result["transformers"], result["moe_router"]
            print(
                f"{model_type:14s} {batch:5d} {num_experts:7d} {router.top_k:3d} "
                f"{hf[0] * 1e6:11.1f} us {ours[0] * 1e6:9.1f} us {hf[0] / ours[0]:6.1f}x"
                f"   (medians {hf[1] * 1e6:.1f} / {ours[1] * 1e6:.1f} us)"
            )


if __name__ == "__main__":
    main()
