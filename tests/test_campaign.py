"""The campaign runner: it trains the queue in order, stops cleanly at its deadline, skips a run
that another process trains, and reports where every run stands."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maml_tf import runs
from reproduce import campaign

SINUSOID = {"experiment": "campaign_test", "task": {"kind": "sinusoid", "support": 5, "query": 5},
            "model": {"kind": "mlp", "sizes": [1, 8, 1]},
            "train": {"meta_batch": 4, "log_every": 20, "checkpoint_every": 100}}


def _config(tmp_path: Path, method: str, iterations: int) -> str:
    path = tmp_path / f"{method}.yaml"
    raw = {**SINUSOID, "method": method, "train": {**SINUSOID["train"], "iterations": iterations}}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(runs.TrainingError, match=r"in use by process \d+"):
            with runs.RunLock(tmp_path):
                pass
    with runs.RunLock(tmp_path):  # released on exit: the run can be resumed
        pass


def test_campaign_trains_in_order_stops_at_its_deadline_and_skips_a_locked_run(tmp_path):
    results, messages = tmp_path / "results", []
    busy = campaign.Run(_config(tmp_path, "busy", 100))
    short = campaign.Run(_config(tmp_path, "short", 200))
    long = campaign.Run(_config(tmp_path, "long", 10_000_000))
    held = campaign.Run(_config(tmp_path, "held", 100), hold="waits for something")
    queue = [busy, held, short, long]
    c = campaign.Campaign(queue, results, hours=75 / 3600, cores=1, report_minutes=0, python=sys.executable,
                          logs=tmp_path / "logs", poll=0.5, min_minutes=0, log=messages.append)
    with runs.RunLock(busy.run_dir(results)):  # another process trains it
        c.train()
    assert campaign.done_iterations(short.run_dir(results)) == 200  # finished, then the next one ran
    done_long = campaign.done_iterations(long.run_dir(results))
    assert 0 < done_long < 10_000_000, "the long run was not stopped with a checkpoint at the deadline"
    assert campaign.done_iterations(held.run_dir(results)) == 0
    # the latest checkpoint only (and no best: no meta-validation here)
    assert len(list((long.run_dir(results) / "checkpoints").glob("*.index"))) == 1
    assert "in use by process" in c.notes[busy]
    rows = {r["run"]: r for r in campaign.status_rows(queue, results, notes=c.notes)}
    assert rows[short.name]["state"] == "done" and rows[short.name]["core_hours_left"] == 0
    assert rows[long.name]["seconds_per_iteration"] > 0 and rows[long.name]["core_hours_left"] > 0
    assert rows[long.name]["cores"] == 1  # recorded by the worker in sessions.jsonl
    assert rows[held.name]["state"].startswith("held")
    text = (results / "campaign.md").read_text()
    assert "Total:" in text and f"{done_long} / 10000000" in text
    sessions = [json.loads(l) for l in (long.run_dir(results) / "sessions.jsonl").read_text().splitlines()]
    assert sessions[-1]["cores"] == 1
    # a re-written table of an unchanged campaign leaves the file as it was
    before = (results / "campaign.md").stat().st_mtime_ns
    campaign.write_table(queue, results, notes=c.notes)
    assert (results / "campaign.md").stat().st_mtime_ns == before


def test_runs_not_trained_yet_are_estimated_from_another_seed_or_make_bench(tmp_path):
    """A queued run with no metrics of its own: another seed's run of the same config gives its
    speed when that run recorded its cores, else the config's `make bench` training-step row
    (seconds x the replicas it ran, one per core; never an evaluation row or a row with overrides),
    else that run on cores not recorded; nothing to go by, and it stays "not measured". Estimates
    are marked ~ and counted apart in the total."""
    results = tmp_path / "results"
    trained = campaign.Run(_config(tmp_path, "trained", 1000))
    old = campaign.Run(_config(tmp_path, "old", 1000))        # trained before cores were recorded
    benched = campaign.Run(_config(tmp_path, "benched", 1000))
    unknown = campaign.Run(_config(tmp_path, "unknown", 1000))
    seed1, old1, old_unbenched1 = (campaign.Run(r.config, seed=1) for r in (trained, old, unknown))
    piloted = campaign.Run(benched.config, sets=("model.sizes=[1,4,1]",))  # another network: not its bench row
    overridden = campaign.Run(_config(tmp_path, "overridden", 1000))    # bench rows with overrides only
    for run, cores in ((trained, 1), (old, None), (unknown, None)):
        d = run.run_dir(results)
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "it_per_s": 4.0}) + "\n" for s in (20, 40)))
        if cores:
            (d / "sessions.jsonl").write_text(json.dumps({"cores": cores}) + "\n")
    (results / "bench").mkdir()
    step = lambda config, sec, **kw: {"config": config, "overrides": {}, "seconds_per_iteration": sec, **kw}
    (results / "bench" / "latest.json").write_text(json.dumps(
        {"machine": {"cores": 2},
         "rl_iterations": [{"config": overridden.config, "overrides": ["train.x=1"], "iteration_seconds": 9.0}],
         "settings": [step(benched.config, 0.5, replicas=2), step(old.config, 0.3, replicas=2),
                      step(benched.config, 7.0, replicas=1, tasks_per_second=3.0),   # evaluation
                      step(overridden.config, 0.1, replicas=2, overrides={"train.first_order": True})]}))
    rows = {r["run"]: r for r in campaign.status_rows(
        [trained, seed1, benched, old1, old_unbenched1, unknown, piloted, overridden], results)}
    assert rows[trained.name]["estimated_from"] is None and rows[trained.name]["seconds_per_iteration"] == 0.25
    assert rows[seed1.name]["estimated_from"] == "the config's own run"
    assert rows[seed1.name]["core_hours_left"] == pytest.approx(1000 * 0.25 / 3600)
    assert rows[benched.name]["estimated_from"] == campaign.BENCH
    assert rows[benched.name]["core_hours_left"] == pytest.approx(1000 * 0.5 * 2 / 3600)
    assert rows[old1.name]["estimated_from"] == campaign.BENCH   # its sibling's cores are unknown
    assert rows[old1.name]["core_hours_left"] == pytest.approx(1000 * 0.3 * 2 / 3600)
    assert rows[old_unbenched1.name]["estimated_from"] == "the config's own run"
    for r in (unknown, piloted):  # its own speed, or its own settings (no bench row applies)
        assert rows[r.name]["estimated_from"] is None
    for r in (piloted, overridden):
        assert rows[r.name]["core_hours_left"] is None
    text = campaign.table(list(rows.values()))
    assert "~1 (core-seconds; make bench, the step alone)" in text and "2 run(s) not measured yet" in text
    estimated = 1000 * (0.25 + 1.0 + 0.6 + 0.25) / 3600
    assert f"({estimated:.1f} of them estimated" in text
    # what the entry points print before they train a run: the same bench row
    d = benched.run_dir(results)
    assert "at least 0.3 core-hours left" in campaign.estimate(d, 1000, benched.config, results)
    assert "speed not measured yet" in campaign.estimate(d, 1000, None, results)   # (overrides: no config)


def test_runs_not_trained_yet_are_estimated_from_pilots_of_the_same_network_or_a_like_run(tmp_path):
    """Before its own run and its bench row: its pilots that train as it does (each setting but
    validation's the config's; a pilot of another network or training step does not count), the
    median of their core-seconds; after the bench row: the run named by `like`, measured, else its
    bench row."""
    results = tmp_path / "results"
    main = campaign.Run(_config(tmp_path, "main", 1000))
    sizes = yaml.safe_load(Path(main.config).read_text())["model"]["sizes"]
    same = [campaign.Run(main.config, sets=(f"model.sizes={sizes}", f"train.val_every={v}"), iterations=10,
                         dir=f"pilot{v}") for v in (1, 2, 3)]
    other = campaign.Run(main.config, sets=("model.sizes=[1,4,1]",), iterations=10, dir="pilot_other")
    other_step = campaign.Run(main.config, sets=("train.first_order=true",), iterations=10, dir="pilot_fo")
    for run, it_per_s, cores in ((same[0], 4.0, 1), (same[1], 2.0, 2), (same[2], 0.5, None), (other, 0.01, 1),
                                 (other_step, 0.02, 1)):
        d = run.run_dir(results)
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "it_per_s": it_per_s}) + "\n")
        if cores:
            (d / "sessions.jsonl").write_text(json.dumps({"cores": cores}) + "\n")
    model = campaign.Run(_config(tmp_path, "model", 1000))   # measured on 2 cores
    d = model.run_dir(results)
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "it_per_s": 0.5}) + "\n")
    (d / "sessions.jsonl").write_text(json.dumps({"cores": 2}) + "\n")
    like = campaign.Run(_config(tmp_path, "like", 1000), like=model.config)
    benched = campaign.Run(_config(tmp_path, "benched", 1000))
    like_bench = campaign.Run(_config(tmp_path, "like_bench", 1000), like=benched.config)
    like_nothing = campaign.Run(_config(tmp_path, "like_nothing", 1000), like=_config(tmp_path, "nothing", 1))
    benched_like = campaign.Run(_config(tmp_path, "benched_like", 1000), like=model.config)
    (results / "bench").mkdir()
    (results / "bench" / "latest.json").write_text(json.dumps({"settings": [
        {"config": benched.config, "overrides": {}, "seconds_per_iteration": 3.0},
        {"config": main.config, "overrides": {}, "seconds_per_iteration": 9.0},
        {"config": benched_like.config, "overrides": {}, "seconds_per_iteration": 7.0}]}))
    queue = [*same, other, other_step, main, model, like, benched, like_bench, like_nothing, benched_like]
    rows = {r["run"]: r for r in campaign.status_rows(queue, results)}
    # the pilots that train as it does ran 0.25, 1.0 (0.5 s on 2 cores) and 2.0 (cores not recorded:
    # one) core-seconds: median 1.0, ahead of its bench row (9.0); with the other network's (100 s)
    # or the other training step's (50 s) the median would be 1.5
    assert rows[main.name]["estimated_from"] == "its pilots"
    assert rows[main.name]["core_hours_left"] == pytest.approx(1000 * 1.0 / 3600)
    assert rows[benched_like.name]["estimated_from"] == campaign.BENCH   # its own bench row before `like`
    assert rows[benched_like.name]["core_hours_left"] == pytest.approx(1000 * 7.0 / 3600)
    assert rows[like.name]["estimated_from"] == f"like {model.config}"
    assert rows[like.name]["core_hours_left"] == pytest.approx(1000 * 2.0 * 2 / 3600)
    assert rows[like_bench.name]["estimated_from"] == f"like {benched.config}, its {campaign.BENCH} row"
    assert rows[like_bench.name]["core_hours_left"] == pytest.approx(1000 * 3.0 / 3600)
    assert rows[like_nothing.name]["core_hours_left"] is None
    assert rows[other.name]["estimated_from"] is None   # a pilot is measured, never estimated
    assert "~1 (1 core; its pilots)" in campaign.table(list(rows.values()))
    # the committed queue: the Omniglot 5-shot context run goes by conv 5-way 5-shot, ant direction
    # by ant velocity, method for method
    by_config = {r.config: r for r in campaign.QUEUE if not r.sets and r.seed is None}
    assert by_config["omniglot/conv_5w5s_context"].like == "omniglot/conv_5w5s"
    assert [by_config[f"rl/ant_dir/{m}"].like for m in ("maml", "pretrained", "oracle")] == \
        [f"rl/ant_vel/{m}" for m in ("maml", "pretrained", "oracle")]
    for r in campaign.QUEUE:   # each `like` names a config that exists
        assert not r.like or campaign.Run(r.like).path().exists(), r.like


def test_the_queue_is_in_the_agreed_order_and_every_config_exists():
    names = [r.config for r in campaign.QUEUE]
    for r in campaign.QUEUE:
        assert r.path().exists(), r.config
        assert r.budget() > 0
    order = ["omniglot/mlp_5w1s", "omniglot/mlp_5w5s", "omniglot/conv_5w1s_first_order", "omniglot/conv_5w5s",
             "miniimagenet/conv_5w1s", "miniimagenet/conv_5w1s_first_order", "miniimagenet/conv_5w5s",
             "miniimagenet/conv_5w5s_first_order", "rl/cheetah_vel/maml", "rl/cheetah_dir/maml",
             "omniglot/conv_20w1s", "rl/ant_vel/maml", "rl/ant_dir/maml", "omniglot/conv_20w5s"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    # MiniImagenet in two stages: a first budget right after the Omniglot 5-way cells, the paper's
    # after half-cheetah and the Appendix C runs, both ahead of Omniglot 20-way and ant
    for cfg, _, first in campaign.MINIIMAGENET:
        stages = [i for i, r in enumerate(campaign.QUEUE) if r.config == cfg]
        assert [campaign.QUEUE[i].budget() for i in stages] == [first, 60000]
        assert names.index("omniglot/conv_5w5s") < stages[0] < names.index("rl/cheetah_vel/maml")
        assert names.index("rl/cheetah_dir/oracle") < stages[1] < names.index("omniglot/conv_20w1s")
        assert names.index("omniglot/conv_5w5s_context") < stages[1]
    # MLP 5-way 5-shot ended outside the paper's interval: its extra seeds come before MiniImagenet
    seeds = [i for i, r in enumerate(campaign.QUEUE) if r.config == "omniglot/mlp_5w5s" and r.seed is not None]
    assert len(seeds) == 2 and all(campaign.QUEUE[i].report == ("table1", "omniglot_5w5s_mlp") for i in seeds)
    assert names.index("omniglot/conv_5w5s") < seeds[0] < names.index("miniimagenet/conv_5w1s")
    # the sinusoid's and the point's extra seeds (minutes each) come before half-cheetah; Omniglot
    # conv 5-way 1-shot's near the end
    cheap = [i for i, r in enumerate(campaign.QUEUE) if r.seed is not None and r.config.startswith(("sinusoid", "rl/point"))]
    assert len(cheap) == 6 and max(cheap) < names.index("rl/cheetah_vel/maml")
    assert names.index("omniglot/conv_20w5s") < min(i for i, r in enumerate(campaign.QUEUE)
                                                     if r.seed is not None and r.config == "omniglot/conv_5w1s")
    # half-cheetah direction MAML's extra seeds (far below the paper at the full budget) follow its
    # runs at once, ahead of Appendix C's context runs; velocity's (a smaller gap) after them
    cheetah = [i for i, r in enumerate(campaign.QUEUE) if r.seed is not None and r.config.startswith("rl/cheetah")]
    assert [(campaign.QUEUE[i].config, campaign.QUEUE[i].seed) for i in cheetah] == \
        [("rl/cheetah_dir/maml", 2), ("rl/cheetah_dir/maml", 3), ("rl/cheetah_vel/maml", 2), ("rl/cheetah_vel/maml", 3)]
    oracle = max(i for i, n in enumerate(names) if n == "rl/cheetah_dir/oracle")   # the run, not its pilot
    assert cheetah[:2] == [oracle + 1, oracle + 2]
    context = [i for i, r in enumerate(campaign.QUEUE) if r.config.endswith("_context") or r.config.endswith("/context")
               if not r.sets]
    assert [campaign.QUEUE[i].config for i in context] == ["rl/point/context", "omniglot/conv_5w1s_context",
                                                          "rl/cheetah_dir/context", "omniglot/conv_5w5s_context"]
    assert context == list(range(cheetah[1] + 1, cheetah[1] + 5)) and cheetah[2:] == [context[-1] + 1, context[-1] + 2]
    # conv 5-way 5-shot's extra seeds (about 18 core-hours each) come last
    assert [(r.config, r.seed) for r in campaign.QUEUE[-2:]] == [("omniglot/conv_5w5s", 1), ("omniglot/conv_5w5s", 2)]
    # every run has its own directory (a run queued in stages: one directory, growing budgets)
    dirs = {}
    for r in campaign.QUEUE:
        dirs.setdefault(r.run_dir(Path("results")), []).append(r)
    for d, rs in dirs.items():
        assert len({r.config for r in rs}) == 1 and len({r.seed for r in rs}) == 1, d
        budgets = [r.budget() for r in rs]
        assert budgets == sorted(set(budgets)), d


def _fake_python(tmp_path: Path) -> str:
    """A stand-in for the worker's interpreter: it 'trains' until SIGTERM, then exits 130."""
    script = tmp_path / "fakepy"
    script.write_text("#!/bin/sh\necho $$ >> " + str(tmp_path / "pids") + "\n"
                      "trap 'exit 130' TERM\nwhile true; do sleep 0.1; done\n")
    script.chmod(0o755)
    return str(script)


def test_a_worker_stopped_from_outside_is_not_restarted_and_a_stop_signals_each_worker_once(tmp_path):
    import os
    import signal
    import time
    runs_ = [campaign.Run(_config(tmp_path, f"r{i}", 100)) for i in range(2)]
    c = campaign.Campaign(runs_, tmp_path / "results", hours=1, cores=1, report_minutes=0,
                          python=_fake_python(tmp_path), logs=tmp_path / "logs", poll=0.1, min_minutes=0,
                          log=lambda m: None)
    import threading
    t = threading.Thread(target=c.train)
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and not (tmp_path / "pids").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    first = int((tmp_path / "pids").read_text().split()[0])
    os.kill(first, signal.SIGTERM)  # someone stops the worker by hand
    while time.time() < deadline and len((tmp_path / "pids").read_text().split()) < 2:
        time.sleep(0.05)
    pids = (tmp_path / "pids").read_text().split()
    assert len(pids) == 2, "the next run should have started"
    assert runs_[0] in c.notes and "outside" in c.notes[runs_[0]]  # not restarted
    c.stop()
    c.stop()  # a second stop must not signal the worker again (that would abort it)
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(c.signalled) == 1


def test_every_seed_run_in_the_queue_has_a_report_that_lists_it():
    """A seed run trained and never evaluated would be compute spent on nothing that a table shows
    (and a report that never lists it would run again in every campaign): each seed run's report
    evaluates that very config, beside a run of another seed."""
    from reproduce import sinusoid, table1
    cells = {c.name: c.config for c in table1.CELLS}
    for r in campaign.QUEUE:
        if r.seed is None:
            continue
        assert r.seed != r.raw()["seed"] and r.run_dir(Path("results")).name.endswith(f"_seed{r.seed}"), r.name
        kind = r.report[:1]
        if kind == ("table1",):
            assert cells[r.report[1]] == r.config, r.name
        elif kind == ("rl",):
            assert r.config == f"rl/{r.report[1]}/{r.report[2]}", r.name
        else:
            assert kind == ("sinusoid",) and r.config in {sinusoid.METHODS[m] for m in sinusoid.SEED_METHODS}, r.name


def test_sinusoid_seed_runs_are_evaluated_beside_the_main_run_and_the_campaign_sees_each(tmp_path):
    import json
    from reproduce import sinusoid
    from reproduce import train as train_entry
    common = ["--results", str(tmp_path), "--quiet"]
    assert sinusoid.main(["--iterations", "30", *common]) == 0
    assert "## Seeds" not in (tmp_path / "sinusoid" / "table.md").read_text()  # none yet: the table as before
    assert train_entry.main(["sinusoid/maml", "--iterations", "30", "--set", "seed=1", *common]) == 0
    assert (tmp_path / "sinusoid" / "maml_seed1" / "checkpoints" / "checkpoint").exists()
    assert sinusoid.main(["--eval-only", "--iterations", "30", *common]) == 0
    summary = json.loads((tmp_path / "sinusoid" / "summary.json").read_text())
    (row,) = summary["seeds"]["maml"]
    assert row["seed"] == 1 and row["iterations"] == 30 and row["status"] == "partial" and len(row["values"]) == 3
    assert row["values"] != [summary["metrics"]["maml"]["K5"]["mse"][s] for s in (1, 5, 10)]  # its own parameters
    assert "pretrained" not in summary["seeds"]
    text = (tmp_path / "sinusoid" / "table.md").read_text()
    assert "## Seeds: 5-shot MSE" in text and "| maml | 0 | 30, PARTIAL |" in text and "| maml | 1 | 30, PARTIAL |" in text
    runs = [campaign.Run("sinusoid/maml", ("sinusoid",), s) for s in (1, 2)]
    assert campaign.evaluated(runs, tmp_path) == {runs[0].name: 30}   # seed 2: no run, not listed
    assert campaign._reported(tmp_path, runs) == {runs[0].name: 30}


def test_seed_lines_give_each_seed_the_mean_of_full_runs_and_where_the_paper_lies():
    import numpy as np
    from reproduce import common
    every = [{"seed": 0, "status": "full", "iterations": 100, "values": [-40.0, -11.0]},
             {"seed": 2, "status": "full", "iterations": 100, "values": [-36.0, -10.8]},
             {"seed": 3, "status": "partial", "iterations": 50, "values": [-60.0, -30.0]},
             {"seed": 4, "error": "TrainingError: no checkpoint"}]
    # per task: the two full runs' returns on 40 shared tasks (the partial one's are left out)
    rng = np.random.default_rng(0)
    tasks = rng.normal(size=(2, 40))
    per_task = [np.stack([v + 2.0 * t + 0.3 * rng.normal(size=40) for v, t in zip(r["values"], tasks)]) for r in every[:2]]
    runs = [{"status": r["status"], "_per_task": p} for r, p in zip(every[:2], per_task)]
    runs.append({"status": "partial", "_per_task": per_task[0] - 20})
    against = common.seeds_against_paper(runs, [-40.41, -5.0])
    assert against["runs"] == 2 and all(a["df"] >= 1 for a in against["columns"])
    rows, finding = common.seed_lines("maml", every, ["0 steps", "1 steps"], [-40.41, -5.0], against)
    assert rows[0] == "| maml | 0 | 100 | -40.00 | -11.00 |" and rows[2] == "| maml | 3 | 50, PARTIAL | -60.00 | -30.00 |"
    assert rows[3].startswith("| maml | 4 | not evaluated: TrainingError")
    assert rows[4] == "| maml | mean ± std of 2 full runs | | -38.00 ± 2.83 | -10.90 ± 0.14 |"  # the partial one left out
    mean0 = np.mean([p[0].mean() for p in per_task])
    assert abs(against["columns"][0]["difference"] - (-40.41 - mean0)) < 1e-6
    assert "0 steps: paper -40.41 against our -38.00" in finding and "1 steps: paper -5.00 against our -10.90" in finding
    assert finding.count("within") + finding.count("beyond") == 2
    assert finding.endswith("(2 runs are too few to tell: 3 or more give a verdict).")
    # no paper value for a column: no comparison there; no two full runs: no statistics
    assert common.seeds_against_paper(runs, [None, -5.0])["columns"][0] is None
    assert common.seeds_against_paper(runs[:1] + runs[2:], [-40.41, -5.0]) is None
    rows, finding = common.seed_lines("maml", every[2:], ["0 steps", "1 steps"], [-40.41, -5.0], against)
    assert len(rows) == 2 and finding == ""
    # a comparison made over other runs than those shown is not used
    assert common.seed_lines("maml", every[:3] + [{**every[2], "seed": 5, "status": "full"}],
                             ["0 steps", "1 steps"], [-40.41, -5.0], against)[1] == ""


def test_rl_seed_runs_are_evaluated_and_shown_beside_the_main_run(tmp_path):
    import argparse
    import json
    from reproduce import rl as rl_repro
    from reproduce import train as train_entry
    small = ["train.meta_batch=2", "train.trajectories=2", "eval.tasks=2", "eval.trajectories=2", "eval.steps=1"]
    sets = [a for s in small for a in ("--set", s)]
    assert train_entry.main(["rl/point/maml", "--iterations", "1", "--set", "seed=2", *sets, "--threads", "1",
                             "--results", str(tmp_path), "--quiet"]) == 0
    args = argparse.Namespace(results=tmp_path, iterations=1, set=small)
    (row,) = rl_repro.other_seeds("point", "maml", args)
    assert row["seed"] == 2 and row["iterations"] == 1 and len(row["values"]) == len(row["ci95"]) == 2
    assert rl_repro.other_seeds("point", "pretrained", args) == []
    # the table: each seed's row under the environment's, then (two full runs) mean and finding
    run = {"iterations": 100, "paper_iterations": 100, "status": "full", "wall_time_s": 1.0, "seed": 1}
    metrics = {m: {"returns": [-40.0, -11.0, -3.0, -3.0, -3.0], "ci95": [3.8, 1.9, 0.2, 0.3, 0.4]}
               for m in ("maml", "pretrained", "random", "oracle")}
    summary = {"experiment": "rl/point", "commit": "abc", "written": "now", "metrics": metrics, "eval_tasks": 40,
               "runs": {m: dict(run) for m in metrics},
               "seeds": {"maml": [{**row, "status": "full", "iterations": 100, "values": [-36.0, -10.0, -3.2, -3.1, -3.0]}]}}
    out = tmp_path / "rl"
    (out / "point.json").write_text(json.dumps(summary))
    text = rl_repro.table(out, ["point"])
    assert "| maml | 1 | 100 | -40.00 | -11.00 |" in text and "| maml | 2 | 100 | -36.00 | -10.00 |" in text
    assert "| maml | mean ± std of 2 full runs | | -38.00 ± 2.83 |" in text
    assert rl_repro.seed_section("point", summary)[1] == []   # no comparison with the paper computed
    summary["seeds_vs_paper"] = {"maml": {"runs": 2, "columns": [{"difference": -2.41, "allowed": 5.0, "df": 30}] * 4
                                          + [None]}}
    found = rl_repro.seed_section("point", summary)[1]
    assert len(found) == 1 and "0 steps: paper -40.41 against our -38.00" in found[0] and "4 steps" not in found[0]
    # a method whose every seed run failed to evaluate: its rows say so, the table is still written
    summary["seeds"]["maml"] = [{"seed": 2, "error": "DataLossError: truncated"}]
    (out / "point.json").write_text(json.dumps(summary))
    assert "| maml | 2 | not evaluated: DataLossError: truncated |" in rl_repro.table(out, ["point"])


def test_the_reports_run_from_a_snapshot_of_the_last_commit_at_report_time(tmp_path, monkeypatch):
    """Commits made while the workers train (new report generators) are what the reports run;
    the workers keep the snapshot they started from."""
    trees = iter([tmp_path / "started", tmp_path / "at_report"])
    monkeypatch.setattr(campaign, "snapshot", lambda: next(trees))
    seen = {}
    monkeypatch.setattr(campaign.Campaign, "train", lambda self: seen.setdefault("train", self.cwd))
    monkeypatch.setattr(campaign.Campaign, "report", lambda self, threads: seen.setdefault("report", self.cwd))
    assert campaign.main(["--hours", "0.01", "--cores", "1", "--results", str(tmp_path / "results")]) == 0
    assert seen == {"train": tmp_path / "started", "report": tmp_path / "at_report"}


def test_a_snapshot_follows_head_and_keeps_the_tree_a_campaign_still_holds(tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "one")
    first = campaign.snapshot(tmp_path)
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "two")
    second = campaign.snapshot(tmp_path)
    head = git("rev-parse", "HEAD").strip()
    assert second != first and second.name == head[:12] and (second / ".git").exists()
    assert first.exists()   # this process still holds it: not removed under a running campaign
    assert campaign.snapshot(tmp_path) == second   # reused while HEAD stays


def test_a_snapshot_removes_old_trees_and_lock_files_nobody_holds_and_keeps_those_held(tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    commit = lambda m: git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", m)
    git("init", "-q")
    commit("one")
    first = campaign.snapshot(tmp_path)
    base = first.parent
    held = [fd for fd in campaign._HELD if fd is not None and os.fstat(fd).st_ino == os.stat(f"{first}.lock").st_ino]
    assert len(held) == 1
    campaign._HELD.remove(held[0])
    os.close(held[0])   # the campaign that ran `first` has exited
    (base / "0123456789ab.lock").touch()   # left by an older version: no tree beside it
    other = base / "ba9876543210.lock"   # held by another running campaign
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); time.sleep(60)", str(other)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        commit("two")
        second = campaign.snapshot(tmp_path)
        assert not first.exists() and not Path(f"{first}.lock").exists()
        assert not (base / "0123456789ab.lock").exists()
        assert other.exists()   # in use: kept
        assert sorted(p.name for p in base.iterdir()) == sorted([second.name, f"{second.name}.lock", other.name])
    finally:
        holder.kill()
        holder.wait()


def test_a_shared_lock_is_retaken_when_its_file_was_deleted_before_it_was_locked(tmp_path, monkeypatch):
    lock = tmp_path / "x.lock"
    real_flock, calls = campaign.fcntl.flock, []

    def flock(fd, op):   # the cleaner deletes the file between our open and our lock, once
        calls.append(op)
        if len(calls) == 1:
            lock.unlink()
        return real_flock(fd, op)

    monkeypatch.setattr(campaign.fcntl, "flock", flock)
    fd = campaign._hold(lock, exclusive=False)
    try:
        assert len(calls) == 2 and lock.exists() and os.fstat(fd).st_ino == os.stat(lock).st_ino
    finally:
        os.close(fd)


def test_a_cells_two_stages_are_reported_by_one_evaluation_that_names_the_cell_once(tmp_path, monkeypatch):
    stages = [r for r in campaign.QUEUE if r.report == ("table1", "miniimagenet_5w1s_conv")]
    assert len(stages) == 2 and len({r.run_dir(tmp_path) for r in stages}) == 1   # one run directory
    monkeypatch.setattr(campaign.Campaign, "moved", lambda self: stages)
    calls = []

    class Done:
        returncode = 1   # (so that nothing is recorded as reported)

    monkeypatch.setattr(campaign.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    c = campaign.Campaign(campaign.QUEUE, tmp_path, hours=0.01, cores=1, report_minutes=0, python="py",
                          log=lambda m: None)
    c.report(threads=1)
    assert len(calls) == 1 and calls[0][calls[0].index("--cells") + 1] == "miniimagenet_5w1s_conv"


def test_an_rl_context_run_counts_as_reported_only_once_its_appendix_table_is_written_too(tmp_path, monkeypatch):
    """reproduce.rl evaluates the context run, reproduce.appendix context then writes its table:
    a failure of either leaves the run to the next campaign, even where rl/ENV.json lists it."""
    ctx, maml = (campaign.Run(f"rl/point/{m}", ("rl", "point", m)) for m in ("context", "maml"))
    monkeypatch.setattr(campaign, "done_iterations", lambda run_dir: 7)
    c = campaign.Campaign([maml, ctx], tmp_path, hours=0.01, cores=1, report_minutes=0, python="py",
                          log=lambda m: None)
    for r in (ctx, maml):
        (r.run_dir(tmp_path) / "checkpoints").mkdir(parents=True)
        (r.run_dir(tmp_path) / "checkpoints" / "checkpoint").write_text("")
    (tmp_path / "rl" / "point.json").write_text(json.dumps({"runs": {m: {"iterations": 7} for m in ("context", "maml")}}))
    (tmp_path / "campaign.json").write_text(json.dumps({"reported_iterations": {ctx.name: 3, maml.name: 3}}))
    assert c.moved() == [maml, ctx]  # rl/point.json is no proof that the tables after it were written
    rcs, calls = {"reproduce.rl": 0, "reproduce.appendix": 1}, []

    class Done:
        def __init__(self, module):
            self.returncode = rcs[module]

    monkeypatch.setattr(campaign.subprocess, "run", lambda cmd, **kw: calls.append(cmd[2]) or Done(cmd[2]))
    reported = lambda: json.loads((tmp_path / "campaign.json").read_text())["reported_iterations"]  # noqa: E731
    c.report(threads=1)
    assert calls == ["reproduce.rl", "reproduce.appendix"] and reported() == {maml.name: 7, ctx.name: 3}
    rcs.update({"reproduce.rl": 1, "reproduce.appendix": 0})   # the appendix table from a failed evaluation
    c.report(threads=1)
    assert reported() == {maml.name: 7, ctx.name: 3}
    rcs["reproduce.rl"] = 0
    c.report(threads=1)
    assert reported() == {maml.name: 7, ctx.name: 7} and c.moved() == []
    # the MAML row beside it moved alone: its context table is written again too (each such row is
    # a report of the queue's)
    assert campaign.CONTEXT_TABLE_MAML_ROWS <= {r.report[:3] for r in campaign.QUEUE}
    calls.clear()
    (tmp_path / "campaign.json").write_text(json.dumps({"reported_iterations": {ctx.name: 7, maml.name: 3}}))
    c.report(threads=1)
    assert calls == ["reproduce.rl", "reproduce.appendix"] and reported() == {maml.name: 7, ctx.name: 7}


def test_the_context_table_is_evaluated_only_for_the_omniglot_runs_that_moved(tmp_path, monkeypatch):
    """Table 3's context runs (Omniglot) are evaluated by reproduce.appendix itself; Tables 4 and 5's
    by reproduce.rl just before: the appendix call then only rewrites the tables (--report-only)."""
    omniglot = campaign.Run("omniglot/conv_5w1s_context", ("appendix", "context"))
    point = campaign.Run("rl/point/context", ("rl", "point", "context"))
    monkeypatch.setattr(campaign, "done_iterations", lambda run_dir: 7)
    for r in (omniglot, point):
        (r.run_dir(tmp_path) / "checkpoints").mkdir(parents=True)
        (r.run_dir(tmp_path) / "checkpoints" / "checkpoint").write_text("")
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(campaign.subprocess, "run", lambda cmd, **kw: calls.append(cmd[2:]) or Done())
    for queue, expected in (([point], ["--report-only"]), ([omniglot, point], ["--tables", "3"])):
        (tmp_path / "campaign.json").write_text(json.dumps({"reported_iterations": {}}))
        calls.clear()
        campaign.Campaign(queue, tmp_path, hours=0.01, cores=1, report_minutes=0, python="py",
                          log=lambda m: None).report(threads=1)
        appendix_call = next(c for c in calls if c[0] == "reproduce.appendix")
        assert appendix_call[1:1 + len(expected) + 1] == ["context", *expected], appendix_call
    assert json.loads((tmp_path / "campaign.json").read_text())["reported_iterations"] == \
        {omniglot.name: 7, point.name: 7}
