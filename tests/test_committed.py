"""Every checkpoint committed in results/ restores with its run's own config: what a fresh clone
resumes and evaluates from."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from maml_tf import config, train

ROOT = Path(__file__).resolve().parent.parent
RUNS = sorted(p.parent.parent for p in (ROOT / "results").rglob("checkpoints/checkpoint"))


def _index_step(folder: Path) -> int:
    for line in (folder / "checkpoint").read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split('"')[1].rsplit("-", 1)[1])
    raise AssertionError(f"no checkpoint named in {folder}")


def test_there_are_committed_runs():
    assert len(RUNS) >= 20


@pytest.mark.parametrize("run_dir", RUNS, ids=[str(r.relative_to(ROOT / "results")) for r in RUNS])
def test_a_committed_checkpoint_restores(run_dir):
    for f in (run_dir / "checkpoints").glob("ckpt-*.index"):  # the files the index names are there
        assert f.with_suffix(".data-00000-of-00001").exists(), f
    cfg = config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    step = _index_step(run_dir / "checkpoints")
    learner, done = train.restore(cfg, run_dir, "latest")
    assert done == step == int(learner.step.numpy())
    if (run_dir / "best" / "checkpoint").exists():
        best, best_step = train.restore(cfg, run_dir, "best")
        assert best_step == _index_step(run_dir / "best")
        assert int(best.step.numpy()) == step  # the best parameters, the run's own progress
    for k, v in learner.params.items():
        assert np.all(np.isfinite(v.numpy())), k


def test_each_context_config_has_the_z_dim_its_pilots_chose_or_waits_for_them():
    """A context run trains with the z_dim that its pilots chose (results/appendix/context_pilot.json);
    while they have not chosen, the campaign holds the run."""
    import json
    from reproduce import appendix, campaign, common
    pilots = json.loads((ROOT / "results" / "appendix" / "context_pilot.json").read_text())["settings"]
    for setting, configs in appendix.PILOT_DECIDES.items():
        chosen = pilots.get(setting, {}).get("chosen_z_dim")
        for name in configs:
            runs = [r for r in campaign.QUEUE if r.config == name and not r.dir]
            assert runs, name
            if chosen is None:
                assert all(r.hold for r in runs), name
            else:
                assert common.load(name).model["z_dim"] == chosen and not any(r.hold for r in runs), name


def test_the_committed_omniglot_context_pilot_adapts_well_above_chance(omniglot_npz):
    """The Omniglot context vector learns slowly (near chance after 1,000 iterations of a small
    net in a quick run), so what shows that it learns is its committed pilot (3,000 iterations of
    the config, z_dim 8): restored, one inner step on z alone lifts 5-way 1-shot accuracy on 100
    meta-validation tasks from chance to well above it."""
    from maml_tf import evaluate, tasks
    run_dir = ROOT / "results" / "appendix" / "context_pilot" / "omniglot_5w1s_base_z8"
    cfg = config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    learner, _ = train.restore(cfg, run_dir, "best")
    res = evaluate.evaluate(learner.model, learner.param_values(),
                            tasks.build({**cfg.task, "path": str(omniglot_npz)}, split="val"),
                            learner.loss_fn, learner.metric_fn, 1, cfg.train.inner_lr, n_tasks=100, seed=5)
    assert res["mean"][0] < 0.3 and res["mean"][1] > 0.4, res["mean"]


def test_the_committed_inner_step_check_adapts_the_tasks_that_scored_its_pilot():
    """results/appendix/context_pilot.json's check of the inner step on z evaluates the chosen
    pilot's best checkpoint on the very meta-validation tasks of its score: at the config's step
    and the reported number of steps it gives that score again (reproduce.appendix)."""
    import json
    from reproduce import appendix
    check = json.loads((ROOT / "results" / "appendix" / "context_pilot.json").read_text())["inner_step_check"]
    run_dir = ROOT / "results" / "appendix" / "context_pilot" / f"{appendix.INNER_STEP_CHECK[0]}_z{check['z_dim']}"
    best = json.loads((run_dir / "best.json").read_text())
    cfg = config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert check["checkpoint"] == best["step"] and check["tasks"] == cfg.train.val_tasks
    from maml_tf import evaluate
    assert check["inner_lr"] == pytest.approx(evaluate.step_size(cfg))
    at_config_step = check["accuracy"]["1"]
    assert at_config_step[cfg.eval.headline_step] == pytest.approx(100 * best["value"], abs=0.01)
