"""A/B check of two builds of the compiled core: bit-identical output, and speed.

How to use:

    # OLD: main as it was, built in place in a tree of its own
    git -C /work/main archive HEAD | tar -x -C /tmp/old_build
    (cd /tmp/old_build && python setup.py build_ext --inplace)
    # NEW: the working tree, built in place
    (cd /work/main && python setup.py build_ext --inplace)
    python benchmarks/ab_compare.py --old /tmp/old_build --new /work/main

    python benchmarks/ab_compare.py --old A --new B --paths avx2 --no-timing
    python benchmarks/ab_compare.py --old A --new B --no-identity --rounds 60

It prints what it loaded, the corpus, one IDENTICAL / n MISMATCHES line per
path (then the first mismatches, --max-report), and the timing table.  The
exit status is 0 when every output agreed, 1 on a mismatch, 2 on a usage
error.  OLD = NEW (one tree twice) is a self-check of this script: it must
report IDENTICAL and ratios near 1.  A full run (baseline and avx2, 3000
random cases, 30 rounds) takes about 30 s on the 2-core dev box.

--old and --new name build trees (a directory holding moe_router/ with the
compiled `_core_<isa>*.so` modules) or the moe_router/ directory itself.
Nothing is installed, and nothing of the moe_router package is imported:
only the compiled modules are loaded, so both builds live in one process.

Loading: each module file is first copied into a private temporary
directory, then loaded with importlib.util.spec_from_file_location under a
synthetic package per side ("moe_router_old._core_avx2",
"moe_router_new._core_avx2": the last component is kept, as the init function
is PyInit__core_avx2).  The copy matters: the dynamic loader hands back the
already loaded library for a file it has seen (same path or inode), and a
Cython 3 module asked to initialise twice returns its first module object,
so OLD = NEW without copies would compare a module with itself.  The copies
also keep a rebuild of NEW during a run from touching the loaded code.  The
avx2/avx512 modules are loaded only when the CPU has the instructions (asked
through the baseline module's build_info(), as moe_router/_dispatch.py does).

1. Bit-identity (--no-identity skips it).  For every path in --paths that
   both builds have and the CPU runs, route_rows of OLD and NEW is called on
   the same inputs into separate buffers pre-filled with the same junk bytes
   (one spare row at the end catches writes past the output), and the return
   value, the ids bytes and the weights bytes (weights compared as unsigned
   integers, so NaN and -0.0 compare by their bits) must all agree.  The
   corpus is a fixed list of cases that covers each expert count / top_k /
   group layout and the dtype combinations, plus --cases random ones
   (--seed): expert counts 1..300 (8, 16, 32, 60, 64, 128, 256, 257 and odd
   ones), top_k 1..min(n, 24), > 16 and = n; float32/float64 logits;
   int32/uint32/int64 ids; float32/float64 weights; norm on/off; softmax and
   sigmoid with/without a bias; n_group/topk_group layouts (256/8/4, 64/8/3,
   160/8/3, ...); routed_scaling_factor 1 and 2.5; batches 1, 2, 3, 7, 64, 65,
   256 (rows go in pairs: odd batches matter); num_threads 1, and 2 for
   batches >= 64.  Rows are drawn from adversarial kinds (ties from a few
   levels, bfloat16-rounded, all equal, values ulps apart, NaN, all -inf,
   +inf and -inf mixed, fewer finite values than top_k, huge, tiny and
   denormal magnitudes, -0.0/+0.0), one kind per batch or mixed per row.
   A few calls that route_rows must refuse (-1) are included too.
   exp_into, sigmoid_approx_into and sigmoid_topk_rows, where both builds
   have them, are compared the same way.  The first mismatches are listed
   (path, case, row index, old vs new); the exit status is 1 on any.
   Rows that cannot be routed (NaN; all -inf under softmax) are compared
   too: their contents are unspecified by the API, so a mismatch there is
   tagged "bad row"; --allow-bad-row-diffs lists such mismatches without
   failing.

2. Timing A/B (--no-timing skips it).  Per path and router shape, batch
   --rows (256), one thread, OLD and NEW alternate within each of --rounds
   rounds (which one goes first alternates too); each turn is the best of 3
   calibrated loops of about 2 ms.  Reported: min and median ns/token of
   each, new/old of the minima, and the median of the per-round ratios.
   A ratio above 1 is NEW slower.  Both sides get the very same (64-byte
   aligned) buffers.  Noise floor: OLD = NEW on the 2-core dev box gave
   ratios of 0.97-1.03 (a few runs), so read less than ~3% as noise and
   rerun with more --rounds before calling a shape slower.
"""

import argparse
import gc
import importlib.machinery
import importlib.util
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ISAS = ("baseline", "avx2", "avx512")
BATCHES = (1, 2, 3, 7, 64, 65, 256)
# fmt: off
EXPERT_COUNTS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 48, 60, 63, 64, 65,
                 96, 100, 127, 128, 129, 160, 192, 255, 256, 257, 300)
# (num_experts, n_group, topk_group): layouts whose groups divide the experts.
GROUP_LAYOUTS = ((256, 8, 4), (64, 8, 3), (160, 8, 3), (128, 8, 4), (256, 8, 8), (256, 8, 1),
                 (256, 16, 4), (128, 4, 2), (60, 4, 2), (32, 4, 1), (64, 2, 1), (16, 16, 5),
                 (300, 3, 2), (255, 5, 3), (96, 12, 6), (8, 2, 1), (20, 4, 3))
# (num_experts, n_group, topk_group) for sigmoid_topk_rows (top_k <= 16).
SIGMOID_TOPK_LAYOUTS = ((256, 8, 4), (64, 8, 3), (160, 8, 3), (128, 1, 1), (32, 4, 2),
                        (16, 1, 1), (256, 1, 1), (48, 3, 2))
# fmt: on
ID_DTYPES = (np.int32, np.uint32, np.int64)
FLOAT_DTYPES = (np.float32, np.float64)
SCALES = (1.0, 2.5)
# fmt: off
ROW_KINDS = ("normal", "levels", "bf16", "equal", "ulps", "nan", "all_neg_inf", "inf_mix",
             "few_finite", "huge", "tiny", "denormal", "zeros")
# exp_into inputs: its edges (the float32 and float64 overflow / underflow
# thresholds), the special values and the extremes of each dtype.
EXP_SPECIALS = (0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 88.72, 88.73, -87.3, -103.97,
                -104.0, 709.78, 709.79, -708.4, -745.2, -746.0, 1e-8, -1e-8, 0.5, -0.5, 20.0,
                -20.0, 100.0, -100.0)
# fmt: on
JUNK_BYTE = 0xA7  # what output buffers hold before a call


# --------------------------------------------------------------------------
# Loading two builds side by side
# --------------------------------------------------------------------------


def usage_error(message):
    """Stop with exit status 2 (a usage error, not a mismatch)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def find_module_dir(build):
    """The directory holding the compiled _core_*.so modules of a build tree."""
    for candidate in (os.path.join(build, "moe_router"), build):
        if any(module_file(candidate, isa) for isa in ISAS):
            return candidate
    usage_error(
        f"no compiled moe_router/_core_<isa> module under {build!r} "
        f"(build it in place first: python setup.py build_ext --inplace)"
    )


def module_file(module_dir, isa):
    """Path of _core_<isa> with this interpreter's extension suffix, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(module_dir, f"_core_{isa}{suffix}")
        if os.path.isfile(path):
            return path
    return None


def load_extension_copy(package, isa, path, tmp_dir):
    """Copy one compiled module into tmp_dir and import it as `package._core_<isa>`."""
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [tmp_dir]
        sys.modules[package] = pkg
    copy = os.path.join(tmp_dir, os.path.basename(path))
    shutil.copy2(path, copy)
    name = f"{package}._core_{isa}"
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_build(build, package, tmp_root):
    """{isa: module} of a build, the wider paths only where the CPU runs them."""
    module_dir = find_module_dir(build)
    tmp_dir = tempfile.mkdtemp(prefix=f"{package}_", dir=tmp_root)
    baseline_path = module_file(module_dir, "baseline")
    if baseline_path is None:
        usage_error(f"{module_dir!r} has no _core_baseline module")
    modules = {"baseline": load_extension_copy(package, "baseline", baseline_path, tmp_dir)}
    cpu = modules["baseline"].build_info()
    runnable = {"avx2": cpu.get("cpu_avx2", False), "avx512": cpu.get("cpu_avx512", False)}
    for isa in ("avx2", "avx512"):
        path = module_file(module_dir, isa)
        if path is not None and runnable[isa]:
            modules[isa] = load_extension_copy(package, isa, path, tmp_dir)
    return module_dir, modules, cpu


def describe_build(label, module_dir, modules, cpu):
    compiled = [isa for isa in ISAS if module_file(module_dir, isa)]
    print(f"{label}: {module_dir}")
    print(
        f"     compiled {','.join(compiled)}; loaded {','.join(modules)}; "
        f"openmp={cpu.get('openmp')} threads={cpu.get('openmp_max_threads')} "
        f"cpu_avx2={cpu.get('cpu_avx2')} cpu_avx512={cpu.get('cpu_avx512')}"
    )


def paths_to_compare(requested, old_modules, new_modules):
    """The requested paths both builds have loaded; prints why any other is skipped."""
    chosen = []
    for path in requested:
        if path in old_modules and path in new_modules:
            chosen.append(path)
        else:
            missing = [
                side
                for side, mods in (("old", old_modules), ("new", new_modules))
                if path not in mods
            ]
            print(f"skipping path {path}: not compiled or not runnable here ({'/'.join(missing)})")
    return chosen


# --------------------------------------------------------------------------
# Inputs: adversarial rows
# --------------------------------------------------------------------------


def bfloat16_rounded(x):
    """float32 values rounded (to nearest even) to bfloat16's 8 significant bits."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(x), out, x).astype(np.float32)


def make_row(kind, n, dtype, rng):
    """One row of n logits of a kind (see ROW_KINDS), in dtype."""
    info = np.finfo(dtype)
    scale = rng.choice([0.05, 1.0, 3.0, 20.0])
    if kind == "normal":
        return (rng.standard_normal(n) * scale).astype(dtype)
    if kind == "levels":  # ties: a few distinct values
        levels = rng.standard_normal(rng.integers(1, 5)) * scale
        return rng.choice(levels, n).astype(dtype)
    if kind == "bf16":  # a bfloat16 model's logits: many ties among the best
        return bfloat16_rounded(rng.standard_normal(n) * scale).astype(dtype)
    if kind == "equal":
        return np.full(n, rng.choice([0.0, -0.0, 1.0, -3.5, 80.0]), dtype)
    if kind == "ulps":  # values a few ulps apart: x + k * eps
        base = dtype(rng.choice([1.0, -1.0, 0.3, 12.0, 1e-3]))
        steps = rng.integers(-3, 4, n)
        return (base + steps * np.spacing(base)).astype(dtype)
    if kind == "nan":
        row = (rng.standard_normal(n) * scale).astype(dtype)
        if rng.random() < 0.2:
            row[:] = np.nan
        else:
            row[rng.integers(0, n, rng.integers(1, 3))] = np.nan
        return row
    if kind == "all_neg_inf":
        return np.full(n, -np.inf, dtype)
    if kind == "inf_mix":  # some +inf, some -inf among finite values
        row = (rng.standard_normal(n) * scale).astype(dtype)
        row[rng.random(n) < 0.2] = -np.inf
        row[rng.integers(0, n, rng.integers(0, 4))] = np.inf
        return row
    if kind == "few_finite":  # -inf everywhere but a handful (fewer than top_k)
        row = np.full(n, -np.inf, dtype)
        row[rng.integers(0, n, rng.integers(1, 4))] = rng.standard_normal() * scale
        return row
    if kind == "huge":
        return (rng.choice([-1.0, 1.0], n) * info.max * rng.random(n)).astype(dtype)
    if kind == "tiny":
        return (rng.standard_normal(n) * info.tiny * 1e3).astype(dtype)
    if kind == "denormal":
        return (rng.integers(-8, 9, n) * info.smallest_subnormal).astype(dtype)
    if kind == "zeros":
        return rng.choice(np.array([0.0, -0.0], dtype), n)
    raise ValueError(kind)


def make_logits(kinds, n, dtype, rng):
    """A [len(kinds), n] batch, row r of kind kinds[r]."""
    return np.ascontiguousarray(np.stack([make_row(kind, n, dtype, rng) for kind in kinds]))


def make_bias(kind, n, dtype, rng):
    """An e_score_correction_bias of [n] (finite, as the API requires), or None."""
    if kind is None:
        return None
    if kind == "small":
        return (rng.standard_normal(n) * 0.05).astype(dtype)
    if kind == "levels":  # ties in the selection scores
        return rng.choice([0.0, 0.125, -0.25], n).astype(dtype)
    if kind == "large":  # dominates the sigmoid
        return (rng.standard_normal(n) * 1e3).astype(dtype)
    raise ValueError(kind)


def bad_row_mask(logits, sigmoid):
    """Rows route_rows cannot route: a NaN, or (softmax) nothing but -inf."""
    bad = np.isnan(logits).any(axis=-1)
    if not sigmoid:
        bad |= (logits == -np.inf).all(axis=-1)
    return bad


# --------------------------------------------------------------------------
# The corpus of route_rows cases
# --------------------------------------------------------------------------


@dataclass
class Case:
    n: int
    top_k: int
    dtype: type = np.float32
    id_dtype: type = np.int32
    weight_dtype: type = np.float32
    norm: bool = True
    sigmoid: bool = False
    bias: str = None  # make_bias kind
    n_group: int = 1
    topk_group: int = 1
    scale: float = 1.0
    batch: int = 7
    threads: int = 1
    kinds: tuple = ("normal",)  # one per row, cycled
    expect_refusal: bool = False

    def describe(self):
        text = (
            f"n={self.n} k={self.top_k} batch={self.batch} thr={self.threads} "
            f"{np.dtype(self.dtype).name}->ids {np.dtype(self.id_dtype).name}/"
            f"w {np.dtype(self.weight_dtype).name} norm={int(self.norm)} "
            f"{'sigmoid' if self.sigmoid else 'softmax'}"
        )
        if self.bias:
            text += f" bias={self.bias}"
        if self.n_group > 1:
            text += f" groups={self.n_group}/{self.topk_group}"
        if self.scale != 1.0:
            text += f" scale={self.scale}"
        kinds = sorted(set(self.kinds))
        return text + f" rows={'+'.join(kinds) if len(kinds) < 4 else 'mixed'}"


def top_k_choices(n, max_k=24):
    """top_k values worth trying for n experts: small, around 8 and 16, > 16, n."""
    ks = {1, 2, 3, 4, 6, 8, 9, 15, 16, 17, 20, 24, n}
    return sorted(k for k in ks if k <= min(n, max_k) or k == n)


def random_kinds(rng, batch):
    """Row kinds of a batch: one kind throughout, or mixed per row."""
    if rng.random() < 0.6:
        return (rng.choice(ROW_KINDS),)
    return tuple(rng.choice(ROW_KINDS, batch))


def random_batch_and_threads(rng):
    batch = int(rng.choice(BATCHES))
    threads = 2 if batch >= 64 and rng.random() < 0.5 else 1
    return batch, threads


def random_case(rng, n=None, top_k=None, layout=None):
    """A case with every unspecified parameter drawn at random."""
    if layout is not None:
        n, n_group, topk_group = layout
    else:
        n = n or int(rng.choice(EXPERT_COUNTS) if rng.random() < 0.7 else rng.integers(1, 301))
        n_group = topk_group = 1
    if top_k is None:
        limit = min(n, 24, topk_group * (n // n_group))
        top_k = limit if rng.random() < 0.1 else int(rng.integers(1, limit + 1))
    sigmoid = bool(rng.random() < 0.5)
    batch, threads = random_batch_and_threads(rng)
    return Case(
        n=n,
        top_k=top_k,
        dtype=rng.choice(FLOAT_DTYPES),
        id_dtype=rng.choice(ID_DTYPES),
        weight_dtype=rng.choice(FLOAT_DTYPES),
        norm=bool(rng.random() < 0.7),
        sigmoid=sigmoid,
        bias=rng.choice([None, "small", "levels", "large"]) if sigmoid else None,
        n_group=n_group,
        topk_group=topk_group,
        scale=float(rng.choice(SCALES)),
        batch=batch,
        threads=threads,
        kinds=random_kinds(rng, batch),
    )


DEEPSEEK_V3_CASE = dict(
    n=256, top_k=8, sigmoid=True, bias="small", n_group=8, topk_group=4, scale=2.5
)


def coverage_cases(rng):
    """Cases that cover each expert count x top_k, group layout and dtype mix."""
    cases = []
    for n in EXPERT_COUNTS:  # every top_k worth trying, k = n included
        for k in top_k_choices(n):
            cases.append(random_case(rng, n=n, top_k=k))
    for layout in GROUP_LAYOUTS:
        n, n_group, topk_group = layout
        for sigmoid, bias, dtype in itertools.product((False, True), (None, "small"), FLOAT_DTYPES):
            if bias and not sigmoid:
                continue
            case = random_case(rng, layout=layout)
            case.sigmoid, case.bias, case.dtype = sigmoid, bias, dtype
            cases.append(case)
    # Every dtype combination on the shapes the kernels specialise for.
    for dtype, id_dtype, weight_dtype in itertools.product(FLOAT_DTYPES, ID_DTYPES, FLOAT_DTYPES):
        for n, k in ((8, 2), (64, 8), (128, 8), (256, 8), (257, 16), (128, 17), (60, 4)):
            for norm, sigmoid in itertools.product((True, False), (False, True)):
                case = random_case(rng, n=n, top_k=k)
                case.dtype, case.id_dtype, case.weight_dtype = dtype, id_dtype, weight_dtype
                case.norm, case.sigmoid, case.bias = norm, sigmoid, None
                cases.append(case)
    # Every batch size and row kind on the headline routers (Qwen3, DeepSeek-V3).
    for batch, kind in itertools.product(BATCHES, ROW_KINDS + ("mixed",)):
        for threads in (1, 2) if batch >= 64 else (1,):
            kinds = tuple(rng.choice(ROW_KINDS, batch)) if kind == "mixed" else (kind,)
            cases.append(Case(n=128, top_k=8, batch=batch, threads=threads, kinds=kinds))
            cases.append(Case(**DEEPSEEK_V3_CASE, batch=batch, threads=threads, kinds=kinds))
    return cases


def refusal_cases():
    """Calls route_rows must refuse (return -1, write nothing) in both builds."""
    return [
        Case(n=8, top_k=9, expect_refusal=True),  # k > n
        Case(n=64, top_k=0, expect_refusal=True),  # k < 1
        Case(n=64, top_k=9, n_group=8, topk_group=1, expect_refusal=True),  # 9 > one group
        Case(n=60, top_k=4, n_group=8, topk_group=2, expect_refusal=True),  # 60 % 8 != 0
        Case(n=64, top_k=4, bias="small", expect_refusal=True),  # a bias with softmax
    ]


def build_corpus(n_random, seed):
    rng = np.random.default_rng(seed)
    cases = coverage_cases(rng) + refusal_cases()
    cases += [random_case(rng) for _ in range(n_random)]
    for case in cases:  # numpy scalar types -> Python types, for printing
        case.dtype, case.id_dtype, case.weight_dtype = (
            np.dtype(case.dtype).type,
            np.dtype(case.id_dtype).type,
            np.dtype(case.weight_dtype).type,
        )
    return cases


# --------------------------------------------------------------------------
# Bit-identity
# --------------------------------------------------------------------------


@dataclass
class Mismatch:
    path: str
    what: str
    case: str
    detail: str
    bad_row: bool = False


@dataclass
class IdentityTally:
    cases: int = 0
    rows: int = 0
    refused: int = 0
    with_bad_rows: int = 0
    aux: dict = field(default_factory=dict)
    mismatches: list = field(default_factory=list)


def junk_buffer(size, dtype):
    """A buffer of `size` elements whose bytes are all JUNK_BYTE."""
    buf = np.empty(size, dtype)
    buf.view(np.uint8)[:] = JUNK_BYTE
    return buf


def as_bits(a):
    """The array's elements as unsigned integers of the same width (NaN, -0 by bits)."""
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def call_route_rows(module, case, logits, bias):
    """(return value, ids, weights) of one route_rows call into fresh junk buffers."""
    size = (case.batch + 1) * max(case.top_k, 1)  # one spare row: writes past the end show
    ids = junk_buffer(size, case.id_dtype)
    weights = junk_buffer(size, case.weight_dtype)
    rc = module.route_rows(
        logits,
        case.top_k,
        case.norm,
        ids,
        weights,
        num_threads=case.threads,
        num_experts=case.n,
        sigmoid=case.sigmoid,
        n_group=case.n_group,
        topk_group=case.topk_group,
        routed_scaling_factor=case.scale,
        bias=bias,
    )
    return rc, ids, weights


def case_inputs(case, rng):
    kinds = [case.kinds[r % len(case.kinds)] for r in range(case.batch)]
    logits = make_logits(kinds, case.n, case.dtype, rng)
    bias = make_bias(case.bias, case.n, case.dtype, rng)
    return logits, bias


def first_differing_rows(old, new, k, limit=3):
    """Row indices (of k elements each) where the two flat bit arrays differ."""
    k = max(k, 1)
    differ = (old != new).reshape(-1, k).any(axis=1)
    return [int(r) for r in np.flatnonzero(differ)[:limit]]


def compare_route_case(path, old, new, case, rng, tally):
    logits, bias = case_inputs(case, rng)
    bad = bad_row_mask(logits, case.sigmoid)
    rc_old, ids_old, w_old = call_route_rows(old, case, logits, bias)
    rc_new, ids_new, w_new = call_route_rows(new, case, logits, bias)
    tally.cases += 1
    tally.rows += case.batch
    tally.refused += rc_old == -1
    tally.with_bad_rows += bool(bad.any())
    found = []
    if rc_old != rc_new:
        found.append(
            Mismatch(
                path,
                "route_rows return",
                case.describe(),
                f"old {rc_old} new {rc_new} (expected bad rows: {int(bad.sum())})",
            )
        )
    if case.expect_refusal and rc_old != -1:
        print(f"note: {path} old build did not refuse {case.describe()} (returned {rc_old})")
    for what, old_out, new_out in (("ids", ids_old, ids_new), ("weights", w_old, w_new)):
        for row in first_differing_rows(as_bits(old_out), as_bits(new_out), case.top_k):
            found.append(
                describe_row_mismatch(path, what, case, logits, bad, row, old_out, new_out)
            )
    tally.mismatches += found


def describe_row_mismatch(path, what, case, logits, bad, row, old_out, new_out):
    """A Mismatch naming the row, its first differing slot and the row's logits."""
    k = max(case.top_k, 1)
    old_row, new_row = old_out.reshape(-1, k)[row], new_out.reshape(-1, k)[row]
    col = int(np.flatnonzero(as_bits(old_row) != as_bits(new_row))[0])
    if row >= case.batch:
        where, is_bad, inputs = "the spare row past the output", False, ""
    else:
        kind = case.kinds[row % len(case.kinds)]
        where, is_bad = f"row {row} ({kind})", bool(bad[row])
        inputs = f"\n      logits[{row}][:12] = {logits[row, :12].tolist()}"
    more = "..." if k > 8 else ""
    detail = (
        f"{where} slot {col} of {k}: old {old_row[col].item()!r} new {new_row[col].item()!r} "
        f"(bits {as_bits(old_row)[col]:#x} vs {as_bits(new_row)[col]:#x}); "
        f"row old {old_row[:8].tolist()}{more} new {new_row[:8].tolist()}{more}{inputs}"
    )
    return Mismatch(path, what, case.describe(), detail, is_bad)


def both_have(path, old, new, name):
    """Whether both modules have `name`; notes it when only one has."""
    has = (hasattr(old, name), hasattr(new, name))
    if has[0] != has[1]:
        print(f"note: {path}: {name} only in {'old' if has[0] else 'new'}; not compared")
    return all(has)


def exp_inputs(dtype, rng):
    """exp_into inputs: special values, random lengths, a dense sweep, random bits."""
    info = np.finfo(dtype)
    extremes = (info.max, -info.max, info.tiny, -info.tiny, info.smallest_subnormal)
    inputs = [np.array(EXP_SPECIALS + extremes, dtype)]
    for length in (0, 1, 3, 15, 16, 17, 31, 33, 64, 257, 1000):
        inputs.append((rng.standard_normal(length) * rng.choice([1, 10, 100])).astype(dtype))
    low, high = (-120, 90) if dtype == np.float32 else (-760, 712)  # past both thresholds
    inputs.append(np.linspace(low, high, 20001).astype(dtype))
    bits = np.uint32 if dtype == np.float32 else np.uint64
    inputs.append(rng.integers(0, np.iinfo(bits).max, 4099, dtype=bits, endpoint=True).view(dtype))
    return inputs


def compare_exp_into(path, old, new, rng, tally):
    """exp_into of both builds on special and random values, lengths around 16."""
    if not both_have(path, old, new, "exp_into"):
        return
    for dtype in FLOAT_DTYPES:
        inputs = exp_inputs(dtype, rng)
        for x in inputs:
            out_old, out_new = junk_buffer(len(x), dtype), junk_buffer(len(x), dtype)
            old.exp_into(x, out_old)
            new.exp_into(x, out_new)
            count_aux(tally, "exp_into")
            diff = np.flatnonzero(as_bits(out_old) != as_bits(out_new))
            if diff.size:
                i = diff[0]
                tally.mismatches.append(
                    Mismatch(
                        path,
                        "exp_into",
                        f"{np.dtype(dtype).name} len {len(x)}",
                        f"{diff.size} values differ, first x[{i}]={x[i]!r}: "
                        f"old {out_old[i]!r} new {out_new[i]!r}",
                    )
                )


def compare_sigmoid_approx(path, old, new, rng, tally):
    """sigmoid_approx_into of both builds: return value and outputs."""
    if not both_have(path, old, new, "sigmoid_approx_into"):
        return
    inputs = [np.linspace(-40, 40, 16 * 501, dtype=np.float32)]
    for kind in ROW_KINDS:
        inputs.append(make_row(kind, 16 * int(rng.integers(1, 9)), np.float32, rng))
    for x in inputs:
        out_old, out_new = junk_buffer(len(x), np.float32), junk_buffer(len(x), np.float32)
        r_old, r_new = old.sigmoid_approx_into(x, out_old), new.sigmoid_approx_into(x, out_new)
        count_aux(tally, "sigmoid_approx_into")
        diff = np.flatnonzero(as_bits(out_old) != as_bits(out_new))
        if r_old != r_new or diff.size:
            i = diff[0] if diff.size else 0
            tally.mismatches.append(
                Mismatch(
                    path,
                    "sigmoid_approx_into",
                    f"len {len(x)}",
                    f"return old {r_old} new {r_new}; {diff.size} values differ, first x[{i}]="
                    f"{x[i]!r}: old {out_old[i]!r} new {out_new[i]!r}",
                )
            )


def compare_sigmoid_topk(path, old, new, rng, tally):
    """sigmoid_topk_rows of both builds: ids and which rows were taken."""
    if not both_have(path, old, new, "sigmoid_topk_rows"):
        return
    for (n, n_group, topk_group), kind in itertools.product(
        SIGMOID_TOPK_LAYOUTS, ROW_KINDS + ("mixed",)
    ):
        top_k = int(rng.integers(1, min(n, 16, topk_group * (n // n_group)) + 1))
        batch = int(rng.choice(BATCHES))
        kinds = rng.choice(ROW_KINDS, batch) if kind == "mixed" else [kind] * batch
        z = make_logits(kinds, n, np.float32, rng)
        bias = make_bias(rng.choice([None, "small", "levels", "large"]), n, np.float32, rng)
        (ids_old, taken_old) = old.sigmoid_topk_rows(z, top_k, n_group, topk_group, bias)
        (ids_new, taken_new) = new.sigmoid_topk_rows(z, top_k, n_group, topk_group, bias)
        count_aux(tally, "sigmoid_topk_rows")
        differ = (ids_old != ids_new).any(axis=1) | (taken_old != taken_new)
        for row in np.flatnonzero(differ)[:3]:
            tally.mismatches.append(
                Mismatch(
                    path,
                    "sigmoid_topk_rows",
                    f"n={n} k={top_k} groups={n_group}/{topk_group} batch={batch} "
                    f"bias={'yes' if bias is not None else 'no'}",
                    f"row {row} ({kinds[row]}): old {ids_old[row].tolist()} taken={taken_old[row]} "
                    f"new {ids_new[row].tolist()} taken={taken_new[row]}",
                )
            )


def count_aux(tally, name):
    tally.aux[name] = tally.aux.get(name, 0) + 1


def check_identity(paths, old_modules, new_modules, corpus, seed):
    """Compare every path on the corpus; returns the list of mismatches."""
    all_mismatches = []
    for path in paths:
        old, new = old_modules[path], new_modules[path]
        assert old is not new, "the two builds share a module object"
        tally = IdentityTally()
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, ISAS.index(path)])
        for case in corpus:
            compare_route_case(path, old, new, case, rng, tally)
        compare_exp_into(path, old, new, rng, tally)
        compare_sigmoid_approx(path, old, new, rng, tally)
        compare_sigmoid_topk(path, old, new, rng, tally)
        aux = ", ".join(f"{name} {count}" for name, count in tally.aux.items()) or "none"
        verdict = "IDENTICAL" if not tally.mismatches else f"{len(tally.mismatches)} MISMATCHES"
        print(
            f"[{path}] route_rows: {tally.cases} cases, {tally.rows} rows "
            f"({tally.refused} refused, {tally.with_bad_rows} with unroutable rows); "
            f"aux calls: {aux}; {time.perf_counter() - t0:.1f} s -> {verdict}"
        )
        all_mismatches += tally.mismatches
    return all_mismatches


def print_mismatches(mismatches, limit):
    for m in mismatches[:limit]:
        tag = " [bad row: contents unspecified]" if m.bad_row else ""
        print(f"  MISMATCH {m.path} {m.what}{tag}: {m.case}\n      {m.detail}")
    if len(mismatches) > limit:
        print(f"  ... and {len(mismatches) - limit} more")


def describe_corpus(corpus):
    def spread(values):
        return ", ".join(
            f"{v}:{c}"
            for v, c in sorted({v: sum(1 for x in values if x == v) for v in set(values)}.items())
        )

    print(
        f"corpus: {len(corpus)} route_rows cases; "
        f"{len({c.n for c in corpus})} expert counts, top_k up to {max(c.top_k for c in corpus)}, "
        f"{sum(c.n_group > 1 for c in corpus)} grouped, "
        f"{sum(c.sigmoid for c in corpus)} sigmoid ({sum(bool(c.bias) for c in corpus)} biased)"
    )
    print(
        f"  batches {spread([c.batch for c in corpus])}; "
        f"2 threads: {sum(c.threads == 2 for c in corpus)}"
    )
    print(
        f"  logits {spread([np.dtype(c.dtype).name for c in corpus])}; "
        f"ids {spread([np.dtype(c.id_dtype).name for c in corpus])}; "
        f"weights {spread([np.dtype(c.weight_dtype).name for c in corpus])}"
    )


# --------------------------------------------------------------------------
# Timing A/B
# --------------------------------------------------------------------------

# name: (num_experts, top_k, logits dtype, router options, bfloat16-valued logits)
DEEPSEEK_V3 = {
    "sigmoid": True,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "bias": True,
}
# fmt: off
TIMING_SHAPES = {
    "128/8 f32 renorm":      (128, 8, np.float32, {}, False),
    "128/8 bf16-valued f32": (128, 8, np.float32, {}, True),
    "256/8 f32":             (256, 8, np.float32, {}, False),
    "64/4 f32":              (64, 4, np.float32, {}, False),
    "128/8 f32 no renorm":   (128, 8, np.float32, {"norm": False}, False),
    "128/8 f64":             (128, 8, np.float64, {}, False),
    "DeepSeek-V3 256/8":     (256, 8, np.float32, DEEPSEEK_V3, False),
}
# fmt: on


def aligned_empty(shape, dtype, align=64):
    """An uninitialised C-contiguous array whose data starts on an `align`-byte boundary
    (timings from one run to the next do not depend on where NumPy put the rows)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + size].view(dtype).reshape(shape)


def aligned_copy(a, align=64):
    out = aligned_empty(a.shape, a.dtype, align)
    out[...] = a
    return out


def timing_inputs(shape, rows, rng):
    """The route_rows arguments of a timing shape, in 64-byte aligned buffers."""
    n, k, dtype, options, bf16 = shape
    logits = rng.standard_normal((rows, n)).astype(np.float32)
    if bf16:
        logits = bfloat16_rounded(logits)
    bias = None
    if options.get("bias"):
        bias = aligned_copy((rng.standard_normal(n) * 0.05).astype(dtype))
    return dict(
        logits=aligned_copy(logits.astype(dtype)),
        top_k=k,
        norm_topk_prob=options.get("norm", True),
        expert_ids=aligned_empty(rows * k, np.int32),
        expert_weights=aligned_empty(rows * k, np.float32),
        num_threads=1,
        num_experts=n,
        sigmoid=options.get("sigmoid", False),
        n_group=options.get("n_group", 1),
        topk_group=options.get("topk_group", 1),
        routed_scaling_factor=options.get("routed_scaling_factor", 1.0),
        bias=bias,
    )


def timing_call(module, inputs):
    """A no-argument function running module.route_rows on `inputs`.

    Old and new get the very same buffers: where the data lies must not
    differ between them (separately allocated buffers, even 64-byte aligned,
    put one build 7-8% ahead of an identical copy of itself on some shapes).
    """
    args = tuple(inputs.values())  # positional: the keyword parsing is not timed

    def run():
        return module.route_rows(*args)

    if run() != 0:
        raise RuntimeError(f"route_rows refused or failed a timing shape ({module.__name__})")
    return run


def loops_for(fn, seconds=0.002):
    """How many calls of fn take about `seconds`."""
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 4:
            return max(1, int(calls * seconds / elapsed))
        calls *= 4


def best_of_loops(fn, calls, repeats=3):
    """Seconds per call: the best of `repeats` loops of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def time_ab(old_fn, new_fn, rounds):
    """Per-round seconds per call of old and new, alternating which runs first."""
    calls = loops_for(old_fn)
    old_times, new_times = [], []
    for r in range(rounds):
        order = ((old_fn, old_times), (new_fn, new_times))
        for fn, times in order if r % 2 == 0 else order[::-1]:
            times.append(best_of_loops(fn, calls))
    return old_times, new_times


def run_timing(paths, old_modules, new_modules, rows, rounds, seed):
    print(
        f"\ntiming: batch {rows}, one thread, {rounds} rounds, old and new interleaved; "
        f"ns/token (ratio > 1: new slower)"
    )
    print(
        f"  {'path':8s} {'shape':22s} {'old min':>9s} {'old med':>9s} {'new min':>9s} "
        f"{'new med':>9s} {'new/old min':>11s} {'med ratio':>9s}"
    )
    results = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in paths:
            for name, shape in TIMING_SHAPES.items():
                inputs = timing_inputs(shape, rows, np.random.default_rng(seed))
                old_fn = timing_call(old_modules[path], inputs)
                new_fn = timing_call(new_modules[path], inputs)
                old_t, new_t = time_ab(old_fn, new_fn, rounds)
                per_token = 1e9 / rows
                old_min, new_min = min(old_t) * per_token, min(new_t) * per_token
                ratio_min = new_min / old_min
                ratio_med = statistics.median(n / o for n, o in zip(new_t, old_t, strict=True))
                print(
                    f"  {path:8s} {name:22s} {old_min:9.2f} "
                    f"{statistics.median(old_t) * per_token:9.2f} {new_min:9.2f} "
                    f"{statistics.median(new_t) * per_token:9.2f} {ratio_min:11.3f} "
                    f"{ratio_med:9.3f}",
                    flush=True,
                )
                results.append((path, name, ratio_min, ratio_med))
    finally:
        if gc_was_enabled:
            gc.enable()
    worst = max(results, key=lambda r: r[2]) if results else None
    if worst:
        print(f"  slowest new/old (minima): {worst[2]:.3f} ({worst[0]} {worst[1]})")
    return results


# --------------------------------------------------------------------------


def run_identity(args, paths, old_modules, new_modules):
    """The bit-identity check with its report; returns whether it failed."""
    corpus = build_corpus(args.cases, args.seed)
    describe_corpus(corpus)
    mismatches = check_identity(paths, old_modules, new_modules, corpus, args.seed)
    if mismatches:
        shown = min(len(mismatches), args.max_report)
        print(f"\n{len(mismatches)} mismatches (first {shown}):")
        print_mismatches(mismatches, args.max_report)
    failing = [m for m in mismatches if not (args.allow_bad_row_diffs and m.bad_row)]
    print(
        f"identity: {'FAIL' if failing else 'OK'} ({len(mismatches)} mismatches, "
        f"{sum(m.bad_row for m in mismatches)} in unroutable rows) on {', '.join(paths)}"
    )
    return bool(failing)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", required=True, help="old build tree (or its moe_router/ dir)")
    parser.add_argument("--new", required=True, help="new build tree (or its moe_router/ dir)")
    parser.add_argument(
        "--paths",
        default="baseline,avx2",
        help="comma-separated kernel paths (baseline,avx2,avx512)",
    )
    parser.add_argument("--rows", type=int, default=256, help="timing batch size (256)")
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds (30)")
    parser.add_argument(
        "--cases",
        type=int,
        default=3000,
        help="random route_rows cases on top of the fixed coverage set (3000)",
    )
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--max-report", type=int, default=25, help="mismatches listed (25)")
    parser.add_argument(
        "--allow-bad-row-diffs",
        action="store_true",
        help="do not fail on mismatches only in rows that cannot be routed",
    )
    parser.add_argument("--no-identity", action="store_true", help="skip the bit-identity check")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing A/B")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in ISAS]
    if unknown:
        parser.error(f"unknown paths {unknown}; expected some of {ISAS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ab_compare_") as tmp_root:
        old_dir, old_modules, old_cpu = load_build(args.old, "moe_router_old", tmp_root)
        new_dir, new_modules, _ = load_build(args.new, "moe_router_new", tmp_root)
        describe_build("old", old_dir, old_modules, old_cpu)
        describe_build("new", new_dir, new_modules, new_modules["baseline"].build_info())
        if os.path.realpath(old_dir) == os.path.realpath(new_dir):
            print("note: old and new are the same build (a self-check of this script)")
        paths = paths_to_compare(args.paths, old_modules, new_modules)
        if not paths:
            usage_error(f"no path of {args.paths} to compare")
        failed = False
        if not args.no_identity:
            failed = run_identity(args, paths, old_modules, new_modules)
        if not args.no_timing:
            run_timing(paths, old_modules, new_modules, args.rows, args.rounds, args.seed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
