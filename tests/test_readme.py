"""The README as a user runs it: the quick start executes, the set-up is CI's."""

import contextlib
import io
import pathlib
import re

import numpy as np

from moe_router import reference as ref

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(section, lang):
    """The first ```lang code block after the heading `## section`."""
    match = re.search(rf"^## {re.escape(section)}\n.*?^```{lang}\n(.*?)^```", README, re.S | re.M)
    assert match, f"README has no {lang} block under '## {section}'"
    return match.group(1)


def test_quick_start_runs_as_written_and_routes_like_the_reference():
    code = _block("Quick start", "python")
    namespace = {"__name__": "__readme__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md quick start", "exec"), namespace)
    assert printed.getvalue().strip(), "the quick start prints what it routed"
    # Its last decode-loop step against the NumPy reference, and the layer's
    # output recomputed by hand from the reference's choice.
    logits, hidden, experts = namespace["logits"], namespace["hidden"], namespace["experts"]
    ref_ids, ref_w = ref.softmax_topk(logits, namespace["top_k"], True)
    np.testing.assert_array_equal(namespace["expert_ids"], ref_ids)
    np.testing.assert_allclose(namespace["expert_weights"], ref_w, rtol=0, atol=2e-6)
    expected = np.stack(
        [
            sum(ref_w[b, k] * (hidden[b] @ experts[ref_ids[b, k]]) for k in range(ref_ids.shape[1]))
            for b in range(hidden.shape[0])
        ]
    )
    np.testing.assert_allclose(namespace["out"], expected, rtol=1e-4, atol=1e-4)
    assert repr(namespace["router"]) == "Router(num_experts=128, top_k=8, norm_topk_prob=True)"


def test_set_up_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [
        line.split("#")[0].strip()
        for line in _block("Install", "bash").splitlines()
        if line.split("#")[0].strip()
    ]
    assert len(commands) == 2
    for command in commands:
        assert command in (line.strip() for line in ci), f"CI does not run {command!r}"


def test_typed_usage_script_runs():
    # CI type-checks it with mypy (.ci/run); here its calls must also work.
    import runpy

    namespace = runpy.run_path(str(ROOT / "tests" / "typed" / "usage.py"))
    ref_ids, _ = ref.softmax_topk(namespace["logits"], 2, True)
    np.testing.assert_array_equal(namespace["ids"], ref_ids)
