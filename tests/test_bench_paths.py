"""`moe-router bench --paths` and show_config's per-path report (issue 13 item 6).

Only the shape of the results is checked, never a timing.
"""

import math
import os
import subprocess
import sys

import pytest

import moe_router
from moe_router import __main__ as cli
from moe_router import _bench, _dispatch


@pytest.fixture(scope="module")
def tiny_bench():
    return _bench.paths_bench(batch=8, rounds=2, slice_s=0.0002, print_out=False)


def test_paths_bench_has_every_shape_and_path(tiny_bench):
    paths = _dispatch.available_paths()
    assert tiny_bench["paths"] == paths
    assert list(tiny_bench["shapes"]) == [shape[0] for shape in _bench.PATH_SHAPES]
    for name, row in tiny_bench["shapes"].items():
        assert set(row["times"]) == set(paths), name
        for path in paths:
            lo, med = row["times"][path]["min"], row["times"][path]["median"]
            assert math.isfinite(lo) and lo > 0, (name, path)
            assert med >= lo, (name, path)
        assert row["default"] in paths, name
        assert row["fastest"] in paths, name
        assert row["default_over_fastest"] >= 1.0, name


def test_paths_bench_default_paths_are_available(tiny_bench):
    defaults = tiny_bench["default_paths"]
    assert set(defaults) >= {"float32", "float64"}
    assert set(defaults.values()) <= set(_dispatch.available_paths())
    assert tiny_bench["shapes"]["softmax 128/8 f64"]["default"] == defaults["float64"]
    assert tiny_bench["shapes"]["softmax 128/8 f32"]["default"] == defaults["float32"]


def test_paths_bench_treats_a_refusal_as_an_error(monkeypatch):
    class Refuses:
        @staticmethod
        def route_rows(*args, **kwargs):
            return -1

    monkeypatch.setattr(_dispatch, "load", lambda path: Refuses)
    with pytest.raises(RuntimeError, match="refused"):
        _bench.paths_bench(batch=4, rounds=1, slice_s=0.0001, print_out=False)


def test_bfloat16_values_are_bfloat16():
    import numpy as np

    z = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    b = _bench.bfloat16_values(z)
    assert b.dtype == np.float32
    assert not (b.view(np.uint32) & np.uint32(0xFFFF)).any()
    assert np.abs(b - z).max() <= np.abs(z).max() * 2.0**-8


def _run_cli(*args):
    # The package the tests imported, not whatever `moe_router` the cwd holds.
    root = os.path.dirname(os.path.dirname(os.path.abspath(moe_router.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "moe_router", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bench_paths_tiny_run():
    done = _run_cli("bench", "--paths", "--rounds", "2", "--batch", "8")
    assert done.returncode == 0, done.stderr
    for name, *_ in _bench.PATH_SHAPES:
        assert name in done.stdout
    for path in _dispatch.available_paths():
        assert path in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--batches", "0"],
        ["--batches", "-3"],
        ["--batches", "x"],
        ["--min-time", "nan"],
        ["bench", "--paths", "--rounds", "0"],
        ["bench", "--paths", "--batch", "-1"],
        ["bench", "--paths", "--batches", "4"],
        ["bench", "--rounds", "3"],
    ],
)
def test_cli_bad_arguments_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_bad_batches_exit_cleanly():
    done = _run_cli("--batches", "0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "--batches" in done.stderr


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], (list(_bench.DEFAULT_BATCHES), 0.2)),
        (["--batches", "1", "32", "--min-time", "0.05"], ([1, 32], 0.05)),
        (["bench"], (list(_bench.DEFAULT_BATCHES), 0.2)),
        (["bench", "--batches", "4"], ([4], 0.2)),
    ],
)
def test_cli_main_job_arguments(argv, expected, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "main", lambda batches, min_time: calls.append((batches, min_time)))
    monkeypatch.setattr(cli, "paths_bench", lambda **kw: pytest.fail("bench --paths ran"))
    cli.run(argv)
    assert calls == [expected]


def test_show_config_reports_every_path():
    config = moe_router.show_config(print_out=False)
    available = _dispatch.available_paths()
    for key in (
        "version",
        "kernel_path",
        "kernel_paths",
        "simd",
        "compiled_paths",
        "available_paths",
        "path_features",
        "openmp",
        "default_threads",
        "parallel_min_rows",
    ):
        assert key in config, key
    assert config["available_paths"] == available
    assert set(config["kernel_paths"]) >= {"float32", "float64"}
    assert set(config["kernel_paths"].values()) <= set(available)
    assert set(config["path_features"]) == set(available)
    for path, facts in config["path_features"].items():
        assert isinstance(facts["simd"], str) and facts["simd"], path
        assert isinstance(facts["features"], tuple), path
        assert all(isinstance(f, str) for f in facts["features"]), path


def test_show_config_prints_aligned(capsys):
    config = moe_router.show_config()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(config) - 1 + len(config["path_features"])
    colons = {line.index(": ") for line in lines}
    assert len(colons) == 1, lines
    assert any(line.lstrip().startswith("parallel_min_rows: ") for line in lines)
