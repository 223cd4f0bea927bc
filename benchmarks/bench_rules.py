"""The scoring rules of issue 15 against each model's PyTorch router, interleaved.

    python benchmarks/bench_rules.py [--rounds 30] [--only ernie4_5_moe,...]

One row per model at its config's router shape, batch 1 and 256, one
thread: the Router (route_rows_rules), and the plain softmax Router of the
same shape for scale (for the softmax rules with a selection bias also the
plain Router with norm_topk_prob=False: it too takes every expert's exp,
the bound those rules share), against the PyTorch form of that
model's transformers router from its logits (moe_router._bench; before
timing, each form is checked against the transformers module itself on
random weights, where transformers is installed).  Timing as
bench_ratios.py: every round times each contender once, ratios of minima.
"""

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import moe_router as mr  # noqa: E402
from moe_router import _bench, _dispatch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ratios import _report, interleaved  # noqa: E402


def models(rng):
    """{name: (title, num_experts, Router options, torch form(torch, z_t), input_ids)}."""
    v4_vocab = 129280

    def bias(n, scale):
        return rng.normal(-0.1, scale, n).astype(np.float32)

    b64, b768, b256, b256v4 = bias(64, 0.02), bias(768, 0.002), bias(256, 0.3), bias(256, 0.3)
    tid2eid = rng.integers(0, 256, (v4_vocab, 6))
    return {
        "ernie4_5_moe": (
            "ERNIE 4.5 MoE 64/6: softmax + moe_statics bias, moe_norm_min clamp",
            64,
            dict(top_k=6, e_score_correction_bias=b64, moe_norm_min=1e-12),
            lambda t, z, **_: _bench.torch_ernie4_5_moe(t, z, t.from_numpy(b64), 6),
        ),
        "longcat_flash": (
            "LongCat-Flash 512+256 zero experts/12: softmax + bias, no renorm, x6",
            768,
            dict(
                top_k=12,
                norm_topk_prob=False,
                e_score_correction_bias=b768,
                routed_scaling_factor=6.0,
                zero_expert_num=256,
            ),
            lambda t, z, **_: _bench.torch_longcat_flash(t, z, t.from_numpy(b768), 12, 6.0),
        ),
        "laguna": (
            "Laguna 256/8: tanh soft-cap 30, sigmoid + bias, renormalised",
            256,
            dict(
                top_k=8,
                scoring_func="sigmoid",
                e_score_correction_bias=b256,
                moe_router_logit_softcapping=30.0,
            ),
            lambda t, z, **_: _bench.torch_laguna(t, z, t.from_numpy(b256), 8, 30.0),
        ),
        "dbrx": (
            "DBRX 16/4: softmax, moe_normalize_expert_weights=1 (p-norm)",
            16,
            dict(top_k=4, moe_normalize_expert_weights=1.0),
            lambda t, z, **_: _bench.torch_dbrx(t, z, 4, 1.0),
        ),
        "dbrx_p2": (
            "DBRX-style 16/4 with p = 2 (the general p-norm path)",
            16,
            dict(top_k=4, moe_normalize_expert_weights=2.0),
            lambda t, z, **_: _bench.torch_dbrx(t, z, 4, 2.0),
        ),
        "deepseek_v4": (
            "DeepSeek-V4 256/6: sqrtsoftplus + bias, renormalised, x1.5",
            256,
            dict(
                top_k=6,
                scoring_func="sqrtsoftplus",
                e_score_correction_bias=b256v4,
                routed_scaling_factor=1.5,
            ),
            lambda t, z, **_: _bench.torch_deepseek_v4(t, z, t.from_numpy(b256v4), 6, 1.5),
        ),
        "deepseek_v4_hash": (
            "DeepSeek-V4 hash layer 256/6: tid2eid[input_ids] (vocab 129280)",
            256,
            dict(top_k=6, scoring_func="sqrtsoftplus", tid2eid=tid2eid, routed_scaling_factor=1.5),
            lambda t, z, ids_t=None, tab_t=None: _bench.torch_deepseek_v4_hash(
                t, z, tab_t, ids_t, 1.5
            ),
        ),
        "phimoe": (
            "PhiMoE 16/2: sparsemixer (eval), router_jitter_noise 0.01",
            16,
            dict(top_k=2, norm_topk_prob=False, scoring_func="sparsemixer"),
            lambda t, z, **_: _bench.torch_phimoe(t, z, 0.01),
        ),
    }


def check_against_torch(torch, name, router, form, z, kw, tokens):
    """The Router and the PyTorch form agree on z (ids as sets, weights 1e-5)."""
    ids_t, w_t = form(torch, torch.from_numpy(z), **kw)
    out = router(z, input_ids=tokens) if tokens is not None else router(z)
    ids, w = out.expert_ids.astype(np.int64), out.expert_weights
    oi, ow = ids_t.numpy().astype(np.int64), w_t.numpy()
    o1, o2 = np.argsort(ids, axis=1), np.argsort(oi, axis=1)
    same = (np.take_along_axis(ids, o1, 1) == np.take_along_axis(oi, o2, 1)).all(axis=1)
    err = np.abs(np.take_along_axis(w, o1, 1) - np.take_along_axis(ow, o2, 1))[same].max()
    if same.mean() < 0.99 or err > 1e-5:
        raise SystemExit(f"{name}: the Router disagrees with PyTorch ({same.mean():.3f}, {err})")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", help="comma-separated model names")
    args = parser.parse_args()
    torch = _bench.import_torch()
    rng = np.random.default_rng(15)
    table = models(rng)
    only = set(args.only.split(",")) if args.only else set(table)
    print(
        f"moe_router {mr.__version__}, kernel paths {_dispatch.paths_by_dtype}; "
        f"{args.rounds} interleaved rounds; ratios of minima"
    )
    for name, (title, e, opts, form) in table.items():
        if name not in only:
            continue
        opts = dict(opts)
        k = opts.pop("top_k")
        norm = opts.pop("norm_topk_prob", True)
        router = mr.Router(e, k, norm, num_threads=1, **opts)
        # the plain softmax router of the same shape: what the rule costs on top
        plain = mr.Router(e, k, num_threads=1)
        # and, for the softmax rules with a selection bias (every expert's
        # probability is needed), the plain router that also needs every
        # exp (its weights are p, not renormalised): the bound they share
        full = mr.Router(e, k, False, num_threads=1)
        full_softmax = "e_score_correction_bias" in opts and opts.get("scoring_func") is None
        for batch in (1, 256):
            # Batch 1 cycles through 64 one-token rows, as a decode loop would.
            pool = [
                (rng.standard_normal((batch, e)) * 2).astype(np.float32)
                for _ in range(64 if batch == 1 else 1)
            ]
            hashed = "tid2eid" in opts
            tokens = [rng.integers(0, 129280, batch) for _ in pool] if hashed else None
            c = {}
            if hashed:
                c["Router"] = lambda it=iter(range(10**12)): router(
                    pool[next(it) % len(pool)], input_ids=tokens[0 if batch > 1 else 0]
                )
            else:
                c["Router"] = lambda it=iter(range(10**12)): router(pool[next(it) % len(pool)])
            c["plain Router, same shape"] = lambda it=iter(range(10**12)): plain(
                pool[next(it) % len(pool)]
            )
            if full_softmax:
                c["plain, norm_topk_prob=False"] = lambda it=iter(range(10**12)): full(
                    pool[next(it) % len(pool)]
                )
            if torch is not None:
                kw = {}
                if hashed:
                    kw = dict(
                        tab_t=torch.from_numpy(opts["tid2eid"]),
                        ids_t=torch.from_numpy(tokens[0]),
                    )
                check_against_torch(
                    torch, name, router, form, pool[0], kw, tokens[0] if hashed else None
                )
                pool_t = [torch.from_numpy(z) for z in pool]
                c["torch (transformers' router)"] = lambda it=iter(range(10**12)), kw=kw: form(
                    torch, pool_t[next(it) % len(pool_t)], **kw
                )
            _report(f"{title}, batch {batch}", batch, interleaved(c, args.rounds), "Router")


if __name__ == "__main__":
    main()
