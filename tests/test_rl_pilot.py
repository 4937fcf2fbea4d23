"""RL pilots against their default runs (reproduce.rl_pilot): windows of the training curves, the
verdict, the report written from the campaign's pilot runs, and the campaign calling it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from reproduce import campaign, rl_pilot


def test_windows_compare_the_curves_on_the_iterations_both_have():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 60)
    b = a[:25] + 10.0   # the pilot has trained 25 iterations
    w = rl_pilot.windows(a, b, 10)
    assert [x["iterations"] for x in w] == [[1, 10], [11, 20], [21, 25]]
    assert all(x["difference"] == 10.0 for x in w)
    half = 1.96 * a[:10].std(ddof=1) / np.sqrt(10)
    assert w[0]["default_ci95"] == round(half, 2) and w[0]["margin"] == round(np.sqrt(2) * half, 2)
    assert rl_pilot.verdict(w[-1]) == "ahead beyond the margin"
    assert rl_pilot.verdict({**w[-1], "difference": -10.0}) == "behind beyond the margin"
    assert rl_pilot.verdict({**w[-1], "difference": 0.5, "margin": 1.0}).startswith("within")


def _run(run_dir: Path, returns, commit: str) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{len(returns)}"\n')
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "pre_return": -50.0, "post_return": r,
                                                               "iteration_s": 2.0}) + "\n"
                                                   for i, r in enumerate(returns)))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": 1, "train": {"iterations": 500}}))
    (run_dir / "sessions.jsonl").write_text(json.dumps({"commit": commit, "from_iteration": 0, "host": "vm"}) + "\n")


def test_the_report_reads_each_pilot_of_the_queue_beside_its_configs_own_run(tmp_path):
    pilots = [r for r in campaign.QUEUE if r.dir.startswith("rl/obs_pilot/")]
    assert {r.config for r in pilots} == {"rl/cheetah_dir/maml", "rl/cheetah_dir/oracle"}
    assert all(r.sets == ("env_kwargs.obs_mode=rllab",) and r.report == ("rl_pilot", "obs_pilot") for r in pilots)
    maml = next(r for r in pilots if r.config.endswith("maml"))
    _run(campaign.Run(maml.config).run_dir(tmp_path), list(np.linspace(-40, 60, 300)), "a" * 40)
    _run(maml.run_dir(tmp_path), list(np.linspace(-40, 60, 300)[:maml.budget()] + 100.0), "b" * 40)
    data = rl_pilot.compare("obs_pilot", tmp_path)
    by = {p["config"]: p for p in data["pilots"]}
    assert by["rl/cheetah_dir/oracle"]["status"] == "not trained yet"
    p = by["rl/cheetah_dir/maml"]
    assert p["status"] == "done" and p["done"] == maml.budget() and len(p["windows"]) == rl_pilot.WINDOWS
    assert all(abs(w["difference"] - 100.0) < 1e-6 for w in p["windows"])
    assert p["pilot_run"]["commits"] == ["b" * 40] and p["default_run"]["iterations"] == 300
    text = rl_pilot.markdown("obs_pilot", data)
    assert "ahead beyond the margin (+100.0" in text and "Not trained yet." in text
    rl_pilot.main(["obs_pilot", "--results", str(tmp_path)])
    assert (tmp_path / "rl" / "obs_pilot.md").read_text() == text


def test_the_campaign_reports_a_moved_pilot_with_reproduce_rl_pilot(tmp_path, monkeypatch):
    pilots = [r for r in campaign.QUEUE if r.report == ("rl_pilot", "obs_pilot")]
    monkeypatch.setattr(campaign.Campaign, "moved", lambda self: pilots)
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(campaign.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    monkeypatch.setattr(campaign, "done_iterations", lambda run_dir: 7)
    c = campaign.Campaign(campaign.QUEUE, tmp_path, hours=0.01, cores=1, report_minutes=0, python="py",
                          log=lambda m: None)
    c.report(threads=1)
    assert [cmd[2:4] for cmd in calls] == [["reproduce.rl_pilot", "obs_pilot"]]
    reported = json.loads((tmp_path / "campaign.json").read_text())["reported_iterations"]
    assert reported == {r.name: 7 for r in pilots}
