"""make bench's record: a partial re-run (--only) replaces its own rows and keeps the others."""
from reproduce import bench


def test_a_partial_bench_run_keeps_the_other_rows_with_the_run_that_measured_them():
    old = {"written": "t0", "commit": "c0", "load_average_at_start": 0.5, "matmul_flops_per_second": 1e11,
           "machine": {"cpu": "AMD"},
           "settings": [{"name": "omniglot_5w1s_conv_second_order", "ratio_to_floor": 2.0},
                        {"name": "miniimagenet_5w1s_second_order", "ratio_to_floor": 3.0}],
           "rl_sampler": [{"name": "raw"}], "rl_iterations": []}
    run = {"written": "t1", "commit": "c1", "load_average_at_start": 1.0, "matmul_flops_per_second": 2e11,
           "machine": {"cpu": "Intel"}}
    new = {**run, "settings": [{"name": "miniimagenet_5w1s_second_order", "ratio_to_floor": 2.5, "measured": run}],
           "rl_sampler": [], "rl_iterations": [{"name": "MAML-TRPO iteration", "measured": run}]}
    out = bench.merged(old, new, "miniimagenet")
    assert [r["name"] for r in out["settings"]] == ["omniglot_5w1s_conv_second_order", "miniimagenet_5w1s_second_order"]
    assert out["settings"][0]["measured"]["commit"] == "c0" and out["settings"][0]["ratio_to_floor"] == 2.0
    assert out["settings"][1]["measured"]["commit"] == "c1" and out["settings"][1]["ratio_to_floor"] == 2.5
    # each row says on which machine it was measured (the merged record's own is the new run's)
    assert [r["measured"]["machine"]["cpu"] for r in out["settings"]] == ["AMD", "Intel"]
    assert out["machine"] == {"cpu": "Intel"}
    assert out["rl_sampler"] == [{"name": "raw", "measured": {k: old[k] for k in run}}]
    assert out["rl_iterations"][0]["measured"]["commit"] == "c1" and out["updated_only"] == "miniimagenet"


def test_rl_iteration_benchmark_reports_every_phase_against_a_floor():
    """`bench_rl.iteration_benchmark` (the `rl_iterations` rows of make bench) on a small point
    meta-batch computed in chunks: every phase has its time and a positive floor, the FLOPs read
    from graphs whose gradients sit in while loops (train.task_chunk)."""
    from reproduce import bench_rl
    sets = ("train.meta_batch=4", "train.trajectories=3", "train.horizon=10", "train.task_chunk=2")
    rec = bench_rl.iteration_benchmark("rl/point/maml", rate=1e10, repeats=1, sets=sets)
    assert set(rec["phases"]) >= set(bench_rl.PHASES) | {"kl_gradient", "direction"}
    for name, ph in rec["phases"].items():
        assert ph["seconds"] > 0 and ph["floor_seconds"] > 0 and ph["ratio_to_floor"] > 0, name
    assert rec["phases"]["direction"]["flops"] == 2 * (rec["cg_iters"] + 1) * rec["phases"]["kl_gradient"]["flops"]
    assert rec["env_steps"] == 2 * 4 * 3 * 10 and rec["peak_resident_gb"] > 0
