"""`make bench`: seconds per meta-iteration (median after compilation) of the compiled meta-step,
its FLOP count, and the ratio of the measured time to the time that FLOP count takes at this
machine's measured float32 matrix-multiply rate. Written to results/bench/latest.json.

The FLOP count is read off the traced graph of the meta-step (forward, inner gradients, outer
gradients): every matrix multiplication (MatMul, BatchMatMul, Einsum) and convolution (Conv2D and
its two backprops, SAME padding counted as full 3x3 windows, as the patches of the batched form
are), 2 FLOPs per multiply-add. Elementwise work (batch norm, ReLU, max-pool, Adam) is not
counted: the floor is the time the matrix work alone would take at the machine's best matmul rate.

The meta-step runs as training runs it: on a machine without GPU, one single-threaded replica of
the task batch per core (distribute.use_cpu_cores) for the configs with train.distribute: mirrored, with
or without XLA as the config's train.xla says. The evaluation rows time one batch of test tasks
(eval.batch tasks, eval.steps inner steps) as `evaluate.evaluate` runs it. Settings whose step
takes over half a second are timed 10 times at most; the first call (tracing and compilation) is
reported as the compile time.

The RL rows (`reproduce/bench_rl.py`): the half-cheetah sampler's env steps per second beside raw
stepping, and one MAML-TRPO iteration phase by phase beside its floors, on one core alone and two
side by side.

    python -m reproduce.bench [--repeats 30] [--threads N] [--out results/bench/latest.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maml_tf import records
from reproduce import common

# imported on first use: --help answers without TensorFlow
tf = common.lazy("tensorflow")
distribute, evaluate, nets, supervised, tasks = (
    common.lazy(f"maml_tf.{m}") for m in ("distribute", "evaluate", "nets", "supervised", "tasks"))


def matmul_rate(sizes=(1024, 2048), repeats: int = 8) -> float:
    """This machine's best measured float32 matmul throughput, FLOP/s: the best of XLA and TF's
    own kernel (oneDNN) over two large square sizes, on every core TensorFlow uses."""
    best_rate = 0.0
    for n in sizes:
        a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
        for jit in (True, False):
            mm = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=jit)
            mm(a, b).numpy()
            for _ in range(repeats):
                t0 = time.perf_counter()
                mm(a, b).numpy()
                best_rate = max(best_rate, 2.0 * n ** 3 / (time.perf_counter() - t0))
    return best_rate


def machine_matmul_rate(threads: int = 0) -> float:
    """This machine's float32 matmul rate, FLOP/s: the larger of matmul_rate with every core on
    one multiplication and `cores` times its one-thread rate (what one single-threaded replica
    per core could reach at best; the larger on the 2-core machine, 484 against 440 GFLOP/s).
    Measured in child processes, because this one runs one single-threaded replica per core
    (distribute.use_cpu_cores), so the floor errs low, never high."""
    def child(n: int) -> float:
        cmd = [sys.executable, "-m", "reproduce.bench", "--rate-only", "--threads", str(n)]
        out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    n = common.cores(threads)
    return max(child(n), n * child(1)) if n > 1 else child(1)


def _dims(shape) -> list[int]:
    return [int(d) for d in shape]


def op_flops(op) -> int:
    """FLOPs of one matrix-multiply or convolution op of a traced graph (0 for any other op)."""
    t = op.type
    try:
        if t == "MatMul":
            a, b = _dims(op.inputs[0].shape), _dims(op.inputs[1].shape)
            m = a[1] if op.get_attr("transpose_a") else a[0]
            k = a[0] if op.get_attr("transpose_a") else a[1]
            n = b[0] if op.get_attr("transpose_b") else b[1]
            return 2 * m * k * n
        if t in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, b = _dims(op.inputs[0].shape), _dims(op.inputs[1].shape)
            adj_x, adj_y = op.get_attr("adj_x"), op.get_attr("adj_y")
            m, k = (a[-1], a[-2]) if adj_x else (a[-2], a[-1])
            n = b[-2] if adj_y else b[-1]
            batch = np.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))) if len(a) > 2 or len(b) > 2 else 1
            return int(2 * batch * m * k * n)
        if t == "Einsum":
            eq = op.get_attr("equation").decode()
            ins = eq.split("->")[0].split(",")
            sizes = {}
            for letters, x in zip(ins, op.inputs):
                for c, d in zip(letters, _dims(x.shape)):
                    sizes[c] = d
            return int(2 * np.prod(list(sizes.values())))
        if t == "Conv2D":  # (the per-task conv4: MiniImagenet, Omniglot 20-way 5-shot; the batched one uses matmuls)
            kh, kw, cin, _ = _dims(op.inputs[1].shape)
            return int(2 * np.prod(_dims(op.outputs[0].shape)) * kh * kw * cin)
        if t in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):  # (filter, dy) or (x, sizes, dy)
            kernel = op.inputs[1] if t == "Conv2DBackpropInput" else op.outputs[0]
            kh, kw, cin, _ = _dims(kernel.shape)
            return int(2 * np.prod(_dims(op.inputs[2].shape)) * kh * kw * cin)
    except (ValueError, TypeError):
        return 0  # unknown static shape: not counted
    return 0


def graph_flops(graph) -> int:
    return sum(op_flops(op) for op in graph.get_operations())


SETTINGS = {
    # name: (config, overrides)
    "sinusoid_second_order": ("sinusoid/maml", {}),
    "sinusoid_first_order": ("sinusoid/maml", {"train.first_order": True}),
    "omniglot_5w1s_conv_second_order": ("omniglot/conv_5w1s", {}),
    "omniglot_5w1s_conv_first_order": ("omniglot/conv_5w1s", {"train.first_order": True}),
    "omniglot_5w5s_conv_second_order": ("omniglot/conv_5w5s", {}),
    "omniglot_20w1s_conv_second_order": ("omniglot/conv_20w1s", {}),
    "omniglot_20w5s_conv_second_order": ("omniglot/conv_20w5s", {}),
    "miniimagenet_5w1s_second_order": ("miniimagenet/conv_5w1s", {}),
    "miniimagenet_5w1s_first_order": ("miniimagenet/conv_5w1s_first_order", {}),
    "miniimagenet_5w5s_second_order": ("miniimagenet/conv_5w5s", {}),
    "miniimagenet_5w5s_first_order": ("miniimagenet/conv_5w5s_first_order", {}),
    # Appendix C's context vector on the MAML row's network: only z adapts
    "omniglot_5w1s_context_second_order": ("omniglot/conv_5w1s_context", {}),
}

# Evaluation as `reproduce.table1` and meta-validation run it: one batch of eval.batch test tasks
# adapted for eval.steps steps (every step's metric), eval.task's query size.
EVAL_SETTINGS = {
    "miniimagenet_5w1s_eval": ("miniimagenet/conv_5w1s", {}),
}

SLOW_STEP_S = 0.5     # settings whose step takes longer are timed MAX_SLOW_REPEATS times at most
MAX_SLOW_REPEATS = 10


def synthetic_source(cfg, task: dict | None = None):
    """The task shapes of the config (or of `task`), with random images: the benchmark needs no
    dataset. MiniImagenet: 84x84x3 bytes scaled by 1/255 as the real data; Omniglot: 28x28x1."""
    t = task or cfg.task
    if t["kind"] == "sinusoid":
        return tasks.build(t)
    rng = np.random.default_rng(0)
    if t["kind"] == "miniimagenet":
        images = rng.integers(0, 256, size=(20, 20, 84, 84, 3), dtype=np.uint8)
        return tasks.FewShot(images, t["way"], t["shot"], t["query"], rotate=False, scale=1.0 / 255.0)
    images = rng.random((100, 20, 28, 28, 1)).astype(np.float32)
    return tasks.FewShot(images, t["way"], t["shot"], t["query"], rotate=True)


def _time(fn, repeats: int) -> tuple[float, list[float], int]:
    """(first call's seconds, i.e. tracing and compilation, the timed calls' seconds, repeats)."""
    t0 = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - t0
    times = []
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[0] > SLOW_STEP_S:
            repeats = min(repeats, MAX_SLOW_REPEATS)
    return compile_s, times, repeats


def bench_setting(name: str, cfg_name: str, overrides: dict, repeats: int, rate: float) -> dict:
    cfg = common.load(cfg_name, sets=[f"{k}={v}" for k, v in overrides.items()])
    strategy = distribute.make_strategy(cfg.train.distribute, cfg.train.meta_batch)
    learner = supervised.MetaLearner(cfg, strategy)
    source = synthetic_source(cfg)
    batch = tasks.TaskBatch.of(source.sample(np.random.default_rng(0), cfg.train.meta_batch), tf.constant)
    shares = distribute.split_across_replicas(strategy, batch)
    compile_s, times, repeats = _time(lambda: learner.train_step(shares).numpy(), repeats)
    flops = graph_flops(learner.meta_gradient_graph(batch))  # the whole task batch
    sec = float(np.median(times))
    floor = flops / rate
    return {"name": name, "config": cfg_name, "overrides": overrides, "meta_batch": cfg.train.meta_batch,
            "replicas": strategy.num_replicas_in_sync, "xla": cfg.train.xla,
            "seconds_per_iteration": sec,
            "flops_per_iteration": flops, "floor_seconds": floor,
            "ratio_to_floor": sec / floor if floor else None, "compile_seconds": compile_s,
            "repeats": repeats}


def bench_eval(name: str, cfg_name: str, overrides: dict, repeats: int, rate: float) -> dict:
    """Seconds per batch of test tasks (eval.batch tasks, eval.steps inner steps, the metric after
    every step) with the compiled function `evaluate.evaluate` runs, on the default device as
    evaluation runs (no replicas); `seconds_per_iteration` is per batch, `tasks_per_second` too."""
    cfg = common.load(cfg_name, sets=[f"{k}={v}" for k, v in overrides.items()])
    model = nets.build(cfg.model)
    loss_fn, metric_fn, _, _ = supervised.objective(cfg)
    fn = evaluate.compiled_steps(model, loss_fn, metric_fn, cfg.eval.steps)
    source = synthetic_source(cfg, {**cfg.task, **cfg.eval.task})
    batch = tasks.TaskBatch.of(source.sample(np.random.default_rng(0), cfg.eval.batch), tf.constant)
    params = model.init(cfg.seed)
    alpha = tf.constant(cfg.train.inner_lr if cfg.eval.inner_lr is None else cfg.eval.inner_lr, tf.float32)
    compile_s, times, repeats = _time(lambda: fn(params, batch, alpha).numpy(), repeats)
    flops = graph_flops(fn.get_concrete_function(params, batch, alpha).graph)
    sec = float(np.median(times))
    floor = flops / rate
    return {"name": name, "config": cfg_name, "overrides": overrides, "eval_batch": cfg.eval.batch,
            "eval_steps": cfg.eval.steps, "replicas": 1, "xla": model.xla,
            "seconds_per_iteration": sec, "tasks_per_second": cfg.eval.batch / sec,
            "flops_per_iteration": flops, "floor_seconds": floor,
            "ratio_to_floor": sec / floor if floor else None, "compile_seconds": compile_s,
            "repeats": repeats}


def merged(old: dict, new: dict, only: str) -> dict:
    """The record of a partial run (--only) merged into the previous one: its rows replace those of
    the same name, the others stay with their own `measured` run (rows written before rows carried
    it get the old record's, its machine included)."""
    was = {k: old.get(k) for k in ("written", "commit", "load_average_at_start", "matmul_flops_per_second",
                                   "machine")}
    out = {**new, "updated_only": only}

    def rows(key: str) -> list:
        fresh = {r["name"] for r in new.get(key) or []}
        kept = [{"measured": was, **r} for r in old.get(key) or [] if r["name"] not in fresh]
        return kept + list(new.get(key) or [])
    for key in ("settings", "rl_sampler", "rl_iterations"):
        out[key] = rows(key)
    order = list(SETTINGS) + list(EVAL_SETTINGS)
    out["settings"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30,
                   help="timed calls per setting after compilation (default 30; 10 at most for a step "
                        "over half a second); the median is reported")
    p.add_argument("--out", default=str(common.RESULTS / "bench" / "latest.json"),
                   help="where the JSON record goes (default results/bench/latest.json)")
    p.add_argument("--only", default=None, help="run only the rows whose name contains this: a setting, "
                   "'rl_sampler', 'rl_iteration', 'ant_integration'; the other rows of --out stay, each "
                   "with the run that measured it")
    p.add_argument("--threads", type=int, default=0, help="CPU cores to use (default: all)")
    p.add_argument("--rate-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rate_only:  # the child process of machine_matmul_rate
        common.use_cores(args.threads, replicas=False)
        print(matmul_rate())
        return 0
    rate = machine_matmul_rate(args.threads)
    common.use_cores(args.threads, replicas=True)  # as the training entry points run
    rows = [bench_setting(n, c, o, args.repeats, rate) for n, (c, o) in SETTINGS.items()
            if args.only is None or args.only in n]
    rows += [bench_eval(n, c, o, args.repeats, rate) for n, (c, o) in EVAL_SETTINGS.items()
             if args.only is None or args.only in n]
    extra, rl_iterations = [], []
    try:
        from reproduce import bench_rl
    except ImportError:  # (no MuJoCo): the supervised rows only
        bench_rl = None
    if bench_rl is not None and (args.only is None or args.only in "rl_sampler"):
        extra = bench_rl.sampler_benchmark()
    if bench_rl is not None and (args.only is None or args.only in "rl_iteration"):  # one MAML-TRPO iteration
        rate1 = machine_matmul_rate(1)
        for name, measure in (("half-cheetah", lambda: bench_rl.side_by_side(rate1)),   # alone, two side by side
                              ("ant", lambda: bench_rl.in_children(rate1, "rl/ant_vel/maml")[0])):
            try:
                rl_iterations.append(measure())
            except RuntimeError as e:  # the rows measured so far are still written
                print(f"warning: the {name} RL iteration benchmark failed: {e}", file=sys.stderr)
    if args.only is None or args.only in "ant_integration":  # returns under the ant's two integrations
        from maml_tf.envs import integration_check
        print(f"wrote {integration_check.write(Path(args.out).parent.parent)}")
    load = os.getloadavg()
    run = {"written": records.now(), "commit": records.commit(), "load_average_at_start": load[0],
           "matmul_flops_per_second": rate, "machine": records.machine()}
    for r in rows + extra + rl_iterations:
        r["measured"] = run  # each row's own run (the machine too): a partial re-run (--only) keeps the other rows
    out = {**run, "settings": rows, "rl_sampler": extra, "rl_iterations": rl_iterations}
    if args.only is not None and Path(args.out).exists():
        out = merged(json.loads(Path(args.out).read_text()), out, args.only)
    records.write_json(args.out, out)
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s (float32); load average {load[0]:.2f}")
    print(f"{'setting':36s} {'s/iter':>9s} {'GFLOP/iter':>11s} {'floor s':>9s} {'ratio':>6s} {'compile s':>9s}")
    for r in rows:
        tasks_s = f"  {r['tasks_per_second']:.1f} test tasks/s" if "tasks_per_second" in r else ""
        print(f"{r['name']:36s} {r['seconds_per_iteration']:9.4f} {r['flops_per_iteration'] / 1e9:11.3f} "
              f"{r['floor_seconds']:9.4f} {r['ratio_to_floor']:6.2f} {r['compile_seconds']:9.1f}{tasks_s}")
    for r in extra:
        print(f"{r['name']:36s} {r['env_steps_per_second']:12.0f} env steps/s")
    for r in rl_iterations:
        pair = ("; two side by side: " + ", ".join(f"{x:.2f}x" for x in r["side_by_side_to_alone"])
                + " its time alone") if "side_by_side_to_alone" in r else ""
        print(f"{r['name']}: {r['iteration_seconds']:.1f} s, {r['iteration_to_raw_stepping']:.2f}x raw stepping "
              f"of its {r['env_steps']} steps; sampling {r['sampling_seconds']:.1f} s, optimisation "
              f"{r['optimisation_seconds']:.1f} s; peak memory {r['peak_resident_gb']:.2f} GB{pair}")
        for name, ph in r["phases"].items():
            print(f"  {name:24s} {ph['seconds']:8.3f} s  {ph['ratio_to_floor']:5.2f}x floor ({ph['floor']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
