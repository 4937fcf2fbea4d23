"""Few-shot episodes: the Omniglot split, rotations, shapes and labels, and a short real run."""
from pathlib import Path

import numpy as np
import pytest

from maml_tf import config, evaluate, tasks, train


def test_omniglot_split_sizes_and_disjointness():
    parts = {s: tasks.omniglot_split(1623, s, seed=1) for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 1100, "val": 100, "test": 423}
    allc = np.concatenate(list(parts.values()))
    assert len(np.unique(allc)) == 1623
    np.testing.assert_array_equal(parts["test"], tasks.omniglot_split(1623, "test", seed=1))  # fixed
    assert not np.array_equal(parts["test"], tasks.omniglot_split(1623, "test", seed=2))


def _labelled_images(n_classes=30, n_examples=20, size=6):
    """Every image is unique and asymmetric; pixel [0, 0] encodes (class, example)."""
    rng = np.random.default_rng(0)
    x = rng.random((n_classes, n_examples, size, size, 1)).astype(np.float32)
    return x


def _find(images, img):
    """(class, example, k) such that rot90(images[class, example], k) == img."""
    for k in range(4):
        r = np.rot90(images, k, axes=(2, 3))
        hit = np.argwhere(np.all(r == img, axis=(2, 3, 4)))
        if len(hit):
            return int(hit[0][0]), int(hit[0][1]), k
    raise AssertionError("image not found")


def test_episode_shapes_labels_and_rotations():
    images = _labelled_images()
    src = tasks.FewShot(images, way=5, shot=2, query=3, rotate=True)
    b = src.sample(np.random.default_rng(3), 4)
    assert b["xs"].shape == (4, 10, 6, 6, 1) and b["xq"].shape == (4, 15, 6, 6, 1)
    assert b["ys"].dtype == np.int32
    rotations = set()
    for t in range(4):
        assert sorted(np.bincount(b["ys"][t])) == [2] * 5 and sorted(np.bincount(b["yq"][t])) == [3] * 5
        per_label, seen = {}, set()
        for x, y in list(zip(b["xs"][t], b["ys"][t])) + list(zip(b["xq"][t], b["yq"][t])):
            c, e, k = _find(images, x)
            assert (c, e) not in seen            # support and query never share an image
            seen.add((c, e))
            per_label.setdefault(int(y), set()).add((c, k))
        for y, ck in per_label.items():
            assert len(ck) == 1                  # one class and one rotation per label
            rotations.add(next(iter(ck))[1])
        assert len({next(iter(v))[0] for v in per_label.values()}) == 5  # five distinct classes
    assert rotations == {0, 1, 2, 3}
    plain = tasks.FewShot(images, way=5, shot=2, query=3, rotate=False).sample(np.random.default_rng(3), 4)
    assert all(_find(images, x)[2] == 0 for x in plain["xs"].reshape(-1, 6, 6, 1))


def test_no_meta_test_character_in_meta_training(omniglot_npz):
    src = tasks.build({"kind": "omniglot", "way": 20, "shot": 1, "query": 1, "path": str(omniglot_npz)})
    train_ids = tasks.omniglot_split(1623, "train", 1)
    test_ids = set(tasks.omniglot_split(1623, "test", 1).tolist())
    used = set()
    for i in range(50):
        used |= set(train_ids[src.sample(tasks.stream_rng(0, i), 16)["classes"]].ravel().tolist())
    assert not used & test_ids and len(used) > 900


def test_missing_dataset_says_what_to_run(tmp_path):
    with pytest.raises(tasks.MissingData, match="make data-omniglot"):
        tasks.build({"kind": "omniglot", "way": 5, "shot": 1, "query": 1, "path": str(tmp_path / "none.npz")})


def test_short_omniglot_run_learns_well_above_chance(omniglot_npz, tmp_path):
    cfg = config.from_dict({
        "experiment": "o", "task": {"kind": "omniglot", "way": 5, "shot": 1, "query": 1, "path": str(omniglot_npz)},
        "model": {"kind": "conv4", "n_out": 5, "channels": 1, "filters": 32, "image_size": 28, "max_pool": False},
        "train": {"iterations": 300, "meta_batch": 16, "inner_lr": 0.4, "log_every": 100, "checkpoint_every": 300},
        "eval": {"steps": 3}})
    learner = train.train(cfg, tmp_path, quiet=True)
    res = evaluate.evaluate(learner.model, learner.param_values(), tasks.build(cfg.task, split="test"),
                            learner.loss_fn, learner.metric_fn, 3, 0.4, n_tasks=100, seed=5)
    assert res["mean"][3] > 0.45, f"5-way accuracy {res['mean'][3]:.2f} after 300 iterations (chance 0.2)"
    assert res["mean"][3] > res["mean"][0] + 0.2


def test_miniimagenet_episodes_from_prepared_arrays(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 5), ("test", 5)):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 256, (n, 20, 84, 84, 3), dtype=np.uint8),
                 classes=np.array([f"n{i:08d}" for i in range(n)]))
    src = tasks.build({"kind": "miniimagenet", "way": 5, "shot": 1, "query": 15, "path": str(tmp_path)}, split="train")
    b = src.sample(np.random.default_rng(1), 4)
    assert b["xs"].shape == (4, 5, 84, 84, 3) and b["xq"].shape == (4, 75, 84, 84, 3)
    assert b["xs"].dtype == np.float32 and 0.0 <= b["xs"].min() and b["xs"].max() <= 1.0
    test = tasks.build({"kind": "miniimagenet", "way": 5, "shot": 5, "query": 5, "path": str(tmp_path)}, split="test")
    assert test.sample(np.random.default_rng(1), 2)["xq"].shape == (2, 25, 84, 84, 3)
    with pytest.raises(tasks.MissingData, match="make data-miniimagenet"):
        tasks.build({"kind": "miniimagenet", "way": 5, "shot": 1, "query": 1, "path": str(tmp_path / "x")})


def test_short_miniimagenet_shaped_run_learns_to_adapt(tmp_path):
    """The MiniImagenet config's network and training path (84x84x3 images, per-task conv4 with
    max-pool, its derivatives, batch norm by matmuls, second order) on synthetic classes that a
    colour separates (each class one colour plus noise; new colours at test): 30 meta-iterations
    (meta-batch 2, one inner step, 2 queries per class) must beat the initial network's accuracy
    after one step of adaptation on the test classes, and chance by far."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 5), ("test", 5)):
        colours = rng.integers(30, 226, size=(n, 1, 1, 1, 3))
        images = np.clip(colours + rng.normal(0, 25, size=(n, 5, 84, 84, 3)), 0, 255).astype(np.uint8)
        np.savez(tmp_path / f"{split}.npz", images=images, classes=np.array([f"n{split[0]}{i:07d}" for i in range(n)]))
    cfg = config.load(Path(__file__).resolve().parent.parent / "reproduce/configs/miniimagenet/conv_5w1s.yaml", {
        "task.path": str(tmp_path), "task.query": 2, "train.iterations": 30, "train.meta_batch": 2,
        "train.inner_steps": 1, "train.log_every": 10, "train.checkpoint_every": 30, "train.val_every": 0})
    assert cfg.model["impl"] == "per_task" and cfg.model["max_pool"] and not cfg.train.first_order
    learner = train.train(cfg, tmp_path / "run", quiet=True)
    test = tasks.build(cfg.task, split="test")
    accuracy = {name: evaluate.evaluate(learner.model, params, test, learner.loss_fn, learner.metric_fn, 1,
                                        cfg.train.inner_lr, n_tasks=40, seed=5, batch=4)["mean"]
                for name, params in (("initial", learner.model.init(cfg.seed)), ("trained", learner.param_values()))}
    assert accuracy["trained"][1] > 0.6 and accuracy["trained"][1] > accuracy["initial"][1] + 0.1, accuracy
    assert accuracy["trained"][0] < 0.35, accuracy   # labels are shuffled per task: chance before adapting


def test_table1_reports_cells_not_run_with_the_reason(tmp_path, monkeypatch):
    import json
    from reproduce import table1
    # Independent of what data/ holds: MiniImagenet is looked up in an empty folder, so its cells
    # are not run for want of data even after `make data-miniimagenet` (table1 itself is unchanged).
    build = tasks.build
    monkeypatch.setattr(tasks, "build", lambda spec, split="train": build(
        {**spec, "path": str(tmp_path / "no-data")} if spec["kind"] == "miniimagenet" else spec, split))
    assert table1.main(["--eval-only", "--results", str(tmp_path), "--quiet"]) == 0
    rows = json.loads((tmp_path / "table1.json").read_text())
    assert len(rows) == len(table1.CELLS)
    keys = {"dataset", "way", "shot", "model", "order", "accuracy", "ci95", "paper_accuracy", "paper_ci95",
            "iterations", "wall_time_s", "status", "note"}
    for r in rows:
        assert keys <= set(r) and r["status"] == "not_run" and r["note"]
        if r["dataset"] == "miniimagenet":
            assert "make data-miniimagenet" in r["note"]
    assert "not_run" in (tmp_path / "table1.md").read_text()
    assert not (tmp_path / table1.FIGURE).exists()  # no run, no curve: no figure
    # a clone without MiniImagenet's data keeps a MiniImagenet row that an earlier run evaluated
    # (the committed numbers of the committed checkpoint), where a cell without a checkpoint stays not run
    i = next(i for i, r in enumerate(rows) if r["dataset"] == "miniimagenet" and r["order"] == "second")
    rows[i].update(accuracy=45.27, ci95=1.87, status="partial", iterations=15000, commit="c0ffee", note="evaluated")
    (tmp_path / "table1.json").write_text(json.dumps(rows))
    assert table1.main(["--eval-only", "--results", str(tmp_path), "--quiet"]) == 0
    again = json.loads((tmp_path / "table1.json").read_text())
    assert again[i] == rows[i] and "| 45.27 ± 1.87 |" in table1.markdown(again)
    assert all(r["status"] == "not_run" for j, r in enumerate(again) if j != i)
    # one cell asked for in a folder without table1.json: the other cells' rows are made too (not
    # run, MiniImagenet's for want of data), with the keys of a row and nothing else
    fresh = tmp_path / "fresh"
    assert table1.main(["--eval-only", "--cells", "omniglot_5w1s_conv", "--results", str(fresh), "--quiet"]) == 0
    made = json.loads((fresh / "table1.json").read_text())
    assert len(made) == len(table1.CELLS) and all(set(r) == set(rows[0]) for r in made), \
        [sorted(set(r) ^ set(rows[0])) for r in made]


def test_table1_evaluates_every_seed_of_a_cell_and_the_campaign_sees_each(omniglot_npz, tmp_path, monkeypatch):
    import json
    from reproduce import campaign, table1
    from reproduce import train as train_entry
    for seed, name in ((0, "mlp"), (3, "mlp_seed3")):
        assert train_entry.main([
            "omniglot/mlp_5w5s", "--iterations", "40", "--set", f"seed={seed}", "--set", f"task.path={omniglot_npz}",
            "--set", "train.meta_batch=4", "--set", "train.checkpoint_every=20", "--set", "train.log_every=20",
            "--set", "train.val_every=20", "--set", "train.val_tasks=50",
            "--threads", "1", "--quiet", "--results", str(tmp_path),
            "--run-dir", str(tmp_path / "omniglot_5w5s" / name)]) == 0
    build = tasks.build
    monkeypatch.setattr(tasks, "build", lambda spec, split="train": build({**spec, "path": str(omniglot_npz)}, split))
    assert table1.main(["--eval-only", "--cells", "omniglot_5w5s_mlp", "--results", str(tmp_path), "--quiet"]) == 0
    # the meta-validation curves' figure: drawn again from the same records, the same bytes (not rewritten)
    fig = tmp_path / table1.FIGURE
    drawn = (fig.read_bytes(), fig.stat().st_mtime_ns)
    assert table1.figure(json.loads((tmp_path / "table1.json").read_text()), tmp_path) == fig
    assert (fig.read_bytes(), fig.stat().st_mtime_ns) == drawn and drawn[0].startswith(b"\x89PNG")
    # a cell without a checkpoint says how to train it: a table1 cell by its name, Appendix C's
    # context cells (not table1 cells) by their config
    for cell, how in ((table1.CELLS[0], f"--cells {table1.CELLS[0].name}`"),
                      (table1.Cell("omniglot", 5, 1, "conv_context", "second", "omniglot/conv_5w1s_context", 94.9, 0.9),
                       "`python -m reproduce.train omniglot/conv_5w1s_context`")):
        note = table1.run_cell(cell, None, True, tmp_path / "empty", True)["note"]
        assert note.startswith("no checkpoint in") and how in note, note
    row = next(r for r in json.loads((tmp_path / "table1.json").read_text()) if r["config"] == "omniglot/mlp_5w5s")
    (other,) = row["other_seeds"]
    assert row["seed"] == 0 and other["seed"] == 3 and other["iterations"] == row["iterations"] == 40
    assert other["accuracy"] != row["accuracy"]  # its own checkpoint: another initialisation
    assert len(other["accuracy_by_step"]) == len(other["ci95_by_step"]) == 4
    assert row["paired_ci95_by_step"][3] == 0 and row["paired_ci95_by_step"][0] > 0  # each step against step 3
    assert "seeds 0 / 3: " in row["note"] and "(partial)" in row["note"]
    # the campaign counts the seed run's evaluation as its own (not the seed-0 row's)
    runs = [campaign.Run("omniglot/mlp_5w5s", ("table1", "omniglot_5w5s_mlp"), s) for s in (None, 3, 4)]
    assert campaign.Run("omniglot/mlp_5w5s", (), 0).run_dir(tmp_path) == runs[0].run_dir(tmp_path)  # its file's seed
    reported = campaign._reported(tmp_path, runs)
    assert reported == {runs[0].name: 40, runs[1].name: 40}
    # a report counts a seed run as evaluated only where table1.json lists it: seed 4's directory
    # appears after the evaluation, so the next campaign evaluates it
    import shutil
    shutil.copytree(tmp_path / "omniglot_5w5s" / "mlp_seed3", tmp_path / "omniglot_5w5s" / "mlp_seed4")
    assert campaign.evaluated(runs, tmp_path) == {runs[0].name: 40, runs[1].name: 40}
    # what moved: seed 4 (listed nowhere). Not the others, even where campaign.json lags behind
    # table1.json (a report that timed out, then run by hand with the same command)
    from maml_tf import records
    records.write_json(tmp_path / "campaign.json", {"reported_iterations": {runs[0].name: 10, runs[1].name: 10}})
    assert campaign.Campaign(runs, tmp_path, 1, 1, 1).moved() == [runs[2]]
    # the meta-validation curve that table1 reports beside a falling test curve is the one that
    # picked the checkpoint: at the protocol's step it is the best logged meta-validation accuracy
    from reproduce import common
    cfg = common.load("omniglot/mlp_5w5s", sets=["train.val_tasks=50"])
    from maml_tf import train as train_lib
    best, _ = train_lib.restore(cfg, tmp_path / "omniglot_5w5s" / "mlp", "best")
    curve = table1.validation_by_step(best, cfg)
    logged = [r["val_accuracy"] for r in map(json.loads, (tmp_path / "omniglot_5w5s" / "mlp" / "metrics.jsonl")
                                                         .read_text().splitlines()) if "val_accuracy" in r]
    assert len(logged) == 2 and len(curve) == 4 and abs(curve[3] - 100 * max(logged)) < 0.01
    # the split diagnosis (full runs outside the paper's interval only: not this partial one) draws
    # the test protocol's tasks from the meta-validation and meta-training classes
    assert "accuracy_by_split" not in row and "instead (a diagnosis)" not in row["note"]
    splits = []
    monkeypatch.setattr(tasks, "build", lambda spec, split="train": splits.append(split) or build(
        {**spec, "path": str(omniglot_npz)}, split))
    as_val = common.load("omniglot/mlp_5w5s", sets=["train.val_tasks=50", "eval.tasks=50",
                                                    f"eval.seed={cfg.train.val_seed}"])
    check = table1.split_check(best, as_val)
    assert splits == ["val", "train"] and set(check) == {"val", "train"}
    assert abs(check["val"][0] - curve[3]) < 0.01   # the validation tasks, with the test protocol
    assert check["train"][0] != check["val"][0]
    # `reproduce.train --set seed=N` without --run-dir trains where the campaign and table1 look
    for run in runs:
        cfg = common.load(run.config, sets=[f"seed={run.seed}"] if run.seed is not None else [])
        assert common.run_dir(cfg, tmp_path, run.config) == run.run_dir(tmp_path)


def test_the_split_diagnosis_says_where_the_papers_value_lies_on_each_set_of_classes():
    from reproduce import table1
    row = {"dataset": "omniglot", "paper_accuracy": 99.9, "eval_tasks": 600}
    assert table1.split_note(row) == ""   # not diagnosed
    note = lambda val, train, **kw: table1.split_note({**row, **kw, "accuracy_by_split": {"val": val, "train": train}})
    above = note([99.65, 0.13], [99.81, 0.09])
    assert above == ("on 600 tasks of the meta-validation / meta-training characters instead (a diagnosis): "
                     "99.65 ± 0.13 / 99.81 ± 0.09; the paper's value lies above our interval on the held-out "
                     "meta-validation characters too: the gap is not in which characters are tested; on the "
                     "meta-training characters it lies inside our interval")
    assert note([99.65, 0.13], [99.7, 0.05]).endswith("it lies above our interval even on the meta-training characters")
    assert "inside our interval on the held-out meta-validation characters: the gap may lie in which characters " \
           "are tested" in note([99.82, 0.10], [99.81, 0.09])
    mini = note([45.0, 1.5], [60.0, 1.5], dataset="miniimagenet", paper_accuracy=48.7)
    assert "classes instead" in mini and "above our interval on the held-out meta-validation classes too" in mini \
        and mini.endswith("on the meta-training classes it lies below our interval")
    assert "lies below our interval on the held-out" in note([99.99, 0.01], [99.99, 0.01])


def test_the_seed_interval_covers_a_new_seed_on_other_test_tasks_95_percent_of_the_time():
    """evaluate.against_seeds, by simulation: n runs (seed effects) scored task by task on one
    shared test sample, whose tasks are hard or easy for every run alike to a degree rho; the
    published run is one more seed on its own tasks. The interval must hold the difference about
    95% of the time whatever rho: adding every test variance to the seeds' spread (right only at
    rho = 1) over-covers at rho = 0, and the seeds' spread alone under-covers at rho = 1."""
    from maml_tf import evaluate
    assert [evaluate.t975(d) for d in (1, 2, 10)] == [12.706, 4.303, 2.228]
    assert abs(evaluate.t975(20) - 2.086) < 2e-3 and abs(evaluate.t975(1000) - 1.962) < 1e-3
    rng = np.random.default_rng(0)
    tasks, trials = 100, 1500
    for n, seed_sd, task_sd, rho in ((3, 0.3, 4.0, 1.0), (3, 0.1, 4.0, 0.5), (3, 0.1, 4.0, 0.0), (5, 0.5, 2.0, 0.7)):
        hits = summed = alone = 0
        for _ in range(trials):
            shared = rng.standard_normal(tasks)
            ours = seed_sd * rng.standard_normal((n, 1)) + task_sd * (
                np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((n, tasks)))
            paper = seed_sd * rng.standard_normal() + task_sd * (
                np.sqrt(rho) * rng.standard_normal(tasks) + np.sqrt(1 - rho) * rng.standard_normal(tasks)).mean()
            diff, half, _ = evaluate.against_seeds(ours, paper)
            hits += abs(diff) <= half
            means, test_var = ours.mean(1), ours.var(1, ddof=1).mean() / tasks
            spread = means.var(ddof=1) * (1 + 1 / n)
            summed += abs(diff) <= evaluate.t975(n - 1) * np.sqrt(spread + 2 * test_var)
            alone += abs(diff) <= evaluate.t975(n - 1) * np.sqrt(spread)
        assert 0.92 <= hits / trials <= 0.98, (n, seed_sd, task_sd, rho, hits / trials)
        if rho == 0.0:
            assert summed / trials > 0.99   # the test noise counted twice: too wide
        if rho == 1.0:
            assert alone / trials < 0.85    # the shared test noise missed: too narrow
    with pytest.raises(ValueError, match="two seeds"):
        evaluate.against_seeds(np.ones((1, 5)), 1.0)


def test_table1_reports_a_falling_step_curve_and_the_seed_spread():
    from reproduce import table1
    from reproduce import common
    cfg = common.load("omniglot/mlp_5w5s")  # trained with 1 inner step
    row = {"accuracy": 95.73, "ci95": 0.71, "accuracy_by_step": [20.1, 97.26, 96.35, 95.73],
           "ci95_by_step": [0.5, 0.6, 0.65, 0.71], "paper_accuracy": 97.5, "paper_inside_ci": False, "seed": 0,
           "status": "full"}
    text = table1.step_trend(row, cfg)
    assert "falls after test step 1: 97.26 / 96.35 / 95.73" in text and "inside our interval after step 1" in text
    assert "a fall of 1.53 ± 0.71)" in text  # a row without paired CIs: the headline's
    assert table1.step_trend({**row, "accuracy_by_step": [20.1, 95.9, 95.8, 95.73]}, cfg) == ""  # within the CI
    # with the paired CI of each step against the headline (same tasks), a smaller fall is a finding
    paired = {**row, "accuracy_by_step": [20.1, 96.3, 95.9, 95.73], "paired_ci95_by_step": [0.9, 0.3, 0.2, 0.0]}
    assert "a fall of 0.57 ± 0.30, paired over the tasks" in table1.step_trend(paired, cfg)
    # only before the headline step: with report_step 2 the fall after step 1 is 0.91 > CI 0.71
    early = common.load("omniglot/mlp_5w5s", sets=["eval.report_step=1"])
    assert table1.step_trend(row, early) == ""  # nothing before step 1 to fall from
    row["other_seeds"] = [{"seed": 1, "accuracy": 97.0, "status": "full"}, {"seed": 2, "accuracy": 96.0, "status": "partial"},
                          {"seed": 3, "error": "TrainingError: no checkpoint"}]
    # a partial run is listed but not in the statistics, which need two full runs; the comparison
    # with the paper is run_cell's (from the runs' per-task results), shown when it covers those runs
    row["seeds_vs_paper"] = {"runs": 2, "difference": 1.13, "allowed": 15.22, "df": 1}
    assert table1.seed_spread(row) == ("seeds 0 / 1 / 2 / 3: 95.73 / 97.00 / 96.00 (partial) / not evaluated "
                                       "(TrainingError: no checkpoint); over the 2 full runs mean 96.37, std 0.90; "
                                       "the paper's value 1.13 above their mean, within the 15.22 that seed variance "
                                       "and the two test samples allow (95%, t with 1 df): 2 runs are too few to tell")
    row["seeds_vs_paper"] = {"runs": 2, "difference": -1.76, "allowed": 1.14, "df": 26}
    assert table1.seed_spread(row).endswith("(95%, t with 26 df): 2 runs are too few to tell")  # even when beyond
    row["other_seeds"][1]["status"] = "full"   # three full runs now, the comparison was of two: not shown
    assert table1.seed_spread(row).endswith("over the 3 full runs mean 96.24, std 0.67")
    row["seeds_vs_paper"] = {"runs": 3, "difference": 1.13, "allowed": 1.5, "df": 30}
    assert table1.seed_spread(row).endswith("(95%, t with 30 df): seed variance can explain it")
    row["seeds_vs_paper"] = {"runs": 3, "difference": -1.76, "allowed": 1.14, "df": 26}
    assert "; the paper's value 1.76 below their mean, beyond the 1.14" in table1.seed_spread(row)
    assert table1.seed_spread(row).endswith("(95%, t with 26 df): not seed variance")
    row["other_seeds"][1]["status"] = "partial"
    row["other_seeds"][0]["status"] = "partial"
    assert "mean" not in table1.seed_spread(row)


def test_the_campaigns_report_reuses_the_test_numbers_of_an_unchanged_picked_checkpoint(omniglot_npz, tmp_path,
                                                                                         monkeypatch):
    """`--reuse-unchanged` (the campaign's reports): a cell whose picked checkpoint is the one
    table1.json measured, under the same settings, keeps those numbers and the provenance of their
    evaluation, while the rest of its row follows the run; other checkpoint files, other settings,
    a run of another seed, or no flag (`make table1`), evaluate."""
    import json
    import shutil
    from maml_tf import records
    from reproduce import common, table1
    from reproduce import train as train_entry
    assert train_entry.main([
        "omniglot/mlp_5w1s", "--iterations", "20", "--set", f"task.path={omniglot_npz}", "--set", "train.meta_batch=4",
        "--set", "train.checkpoint_every=10", "--set", "train.log_every=10", "--set", "train.val_every=10",
        "--set", "train.val_tasks=20", "--threads", "1", "--quiet", "--results", str(tmp_path)]) == 0
    build = tasks.build
    monkeypatch.setattr(tasks, "build", lambda spec, split="train": build({**spec, "path": str(omniglot_npz)}, split))
    calls = []
    evaluate_protocol = table1.evaluate_protocol
    monkeypatch.setattr(table1, "evaluate_protocol", lambda *a: calls.append(1) or evaluate_protocol(*a))
    args = ["--eval-only", "--cells", "omniglot_5w1s_mlp", "--results", str(tmp_path), "--quiet"]
    path = tmp_path / "table1.json"
    row = lambda: next(r for r in json.loads(path.read_text()) if r["config"] == "omniglot/mlp_5w1s")  # noqa: E731

    def edit(**values):  # the cell's row in table1.json, as an earlier report would have left it
        rows = json.loads(path.read_text())
        for r in rows:
            if r["config"] == "omniglot/mlp_5w1s":
                r.update(values)
        path.write_text(json.dumps(rows))

    assert table1.main(args) == 0 and len(calls) == 1
    first = row()
    assert first["iterations"] == 20 and len(first["evaluated_checkpoint_sha256"]) == 64
    assert table1.best_digest(tmp_path / "omniglot_5w1s" / "mlp") == first["evaluated_checkpoint_sha256"]
    # an earlier report, at fewer iterations, by another commit: its numbers and provenance are
    # kept, the iterations and status are the run's
    monkeypatch.setattr(records, "commit", lambda: "f" * 40)
    edit(iterations=10, status="full", commit="e" * 40, accuracy=first["accuracy"] + 1)
    assert table1.main([*args, "--reuse-unchanged"]) == 0 and len(calls) == 1  # not evaluated again
    assert row() == {**first, "commit": "e" * 40, "accuracy": first["accuracy"] + 1}
    assert table1.main(args) == 0 and len(calls) == 2  # without the flag: evaluated
    assert row() == {**first, "commit": "f" * 40}
    edit(evaluated_checkpoint_sha256="0" * 64, accuracy=-1.0)  # other parameters measured that
    assert table1.main([*args, "--reuse-unchanged"]) == 0 and len(calls) == 3 and row()["accuracy"] == first["accuracy"]
    load = common.load  # other settings (here the test's step size): evaluated
    monkeypatch.setattr(common, "load", lambda name, it=None, sets=(): load(
        name, it, [*sets, "eval.inner_lr=0.05"] if name == "omniglot/mlp_5w1s" else sets))
    assert table1.main([*args, "--reuse-unchanged"]) == 0 and len(calls) == 4
    assert row()["evaluated_config_sha256"] != first["evaluated_config_sha256"]
    monkeypatch.setattr(common, "load", load)
    assert table1.main([*args, "--reuse-unchanged"]) == 0 and len(calls) == 5 and row() == {**first, "commit": "f" * 40}
    # a run of another seed beside it: its comparison needs this run's per-task results
    shutil.copytree(tmp_path / "omniglot_5w1s" / "mlp", tmp_path / "omniglot_5w1s" / "mlp_seed3")
    assert table1.main([*args, "--reuse-unchanged"]) == 0 and len(calls) == 7
