"""RL pilot runs against their default runs: the campaign's short runs of an RL config with one
setting changed (`reproduce/campaign.py`, runs whose directory lies under results/rl/<pilot>/),
compared on their training curves, iteration for iteration, with the config's own run. Regenerates
results/rl/<pilot>.json and .md:

    python -m reproduce.rl_pilot obs_pilot      # make rl-obs-pilot

Training returns, not test returns: the default runs keep only their latest and best checkpoints,
so the two can be compared at the same iteration only through what each logged while training
(the mean return over the iteration's 40 training tasks, after the inner step for MAML). No test
task is used, so a pilot may decide a setting.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import yaml

from maml_tf import records
from maml_tf.runs import read_jsonl   # a line cut by a kill is skipped
from reproduce import common

WINDOWS = 6   # a pilot's budget is compared in this many windows of iterations
# what each pilot set compares, in words (the campaign queue's comment gives the reason)
PILOTS = {"obs_pilot": ("observation", "the config's own observation (Gymnasium's 17 numbers)",
                        "rllab's observation (20 numbers, the robot's centre of mass included)")}


def curve(run_dir: Path, n: int | None = None) -> np.ndarray:
    """The training return of iterations 1..n (post-update for MAML, the return otherwise)."""
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "post_return" in r]
    values = np.array([r["post_return"] for r in rows], np.float64)
    return values[:n] if n is not None else values


def windows(a: np.ndarray, b: np.ndarray, size: int) -> list[dict]:
    """Windows of `size` iterations over those both curves have (the last one shorter when they do
    not divide evenly): each curve's mean and 95% half-width (iterations as samples) and the
    difference b - a with the margin sqrt(h_a^2 + h_b^2)."""
    n = min(len(a), len(b))
    out = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        wa, wb = a[start:stop], b[start:stop]
        ha, hb = (1.96 * float(w.std(ddof=1)) / math.sqrt(len(w)) if len(w) > 1 else float("nan") for w in (wa, wb))
        out.append({"iterations": [start + 1, stop], "default": round(float(wa.mean()), 2), "default_ci95": round(ha, 2),
                    "pilot": round(float(wb.mean()), 2), "pilot_ci95": round(hb, 2),
                    "difference": round(float(wb.mean() - wa.mean()), 2),
                    "margin": round(math.sqrt(ha ** 2 + hb ** 2), 2)})
    return out


def verdict(w: dict) -> str:
    """The last window's difference in words."""
    if not w["difference"] or not (abs(w["difference"]) > w["margin"]):
        return "within the margin: no difference shown"
    return "ahead beyond the margin" if w["difference"] > 0 else "behind beyond the margin"


def run_record(run_dir: Path) -> dict:
    """Provenance of a run: its config, the commits that trained it, iterations, seed, wall time
    and machine(s)."""
    from maml_tf import runs
    from reproduce import campaign
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    sessions = read_jsonl(run_dir / "sessions.jsonl")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return {"dir": str(run_dir), "config": cfg, "commits": runs.training_commits(run_dir),
            "iterations": campaign.done_iterations(run_dir), "seed": cfg.get("seed"),
            "wall_time_s": round(sum(r.get("iteration_s", 0.0) for r in rows), 1),
            "hosts": sorted({s.get("host", "?") for s in sessions})}


def compare(pilot_set: str, results: Path) -> dict:
    """Every pilot of the set beside its default run (the config's own run directory)."""
    from reproduce import campaign
    out = []
    for r in [r for r in campaign.QUEUE if r.dir.startswith(f"rl/{pilot_set}/")]:
        pilot_dir, default_dir = r.run_dir(results), campaign.Run(r.config).run_dir(results)
        entry = {"config": r.config, "sets": list(r.sets), "budget": r.budget()}
        if not (pilot_dir / "metrics.jsonl").exists() or not (default_dir / "metrics.jsonl").exists():
            out.append({**entry, "status": "not trained yet"})
            continue
        done = campaign.done_iterations(pilot_dir)
        a, b = curve(default_dir, done), curve(pilot_dir, done)
        out.append({**entry, "status": "done" if done >= r.budget() else "partial", "done": done,
                    "windows": windows(a, b, max(2, r.budget() // WINDOWS)), "pilot_run": run_record(pilot_dir), "default_run": run_record(default_dir)})
    return {"experiment": f"rl/{pilot_set}", "pilots": out, "commit": records.commit(), "written": records.now(),
            "machine": records.machine()}


def markdown(pilot_set: str, data: dict) -> str:
    what, default, pilot = PILOTS[pilot_set]
    lines = [f"# RL pilots: {what}", "",
             f"Generated by `python -m reproduce.rl_pilot {pilot_set}` from the campaign's pilot runs "
             f"(`reproduce/campaign.py`, results/rl/{pilot_set}/); do not edit by hand. Each pilot trains its config "
             f"with {pilot} instead of {default}, the same seed and settings otherwise, and is compared with the "
             "config's own run on the training return each logged (mean over the iteration's training tasks; after "
             "the inner step for MAML), window by window: mean ± 95% half-width over the window's iterations, and the "
             "difference with the margin sqrt(h1² + h2²). One seed each; training tasks only.", ""]
    for p in data["pilots"]:
        title = f"## {p['config']} ({', '.join(p['sets'])})"
        if p["status"] == "not trained yet" or not p["windows"]:
            lines += [title, "", "Not trained yet.", ""]
            continue
        lines += [title, "", f"{p['done']} of {p['budget']} iterations" + (" (partial)" if p["status"] == "partial" else "")
                  + f"; default run trained by {', '.join(c[:7] for c in p['default_run']['commits']) or 'unrecorded commits'},"
                  f" the pilot by {', '.join(c[:7] for c in p['pilot_run']['commits'])}.", "",
                  "| iterations | default | pilot | pilot - default |", "|---|---|---|---|"]
        for w in p["windows"]:
            lines.append(f"| {w['iterations'][0]}-{w['iterations'][1]} | {w['default']:.1f} ± {w['default_ci95']:.1f} | "
                         f"{w['pilot']:.1f} ± {w['pilot_ci95']:.1f} | {w['difference']:+.1f} (± {w['margin']:.1f}) |")
        last = p["windows"][-1]
        lines += ["", f"- Last window (iterations {last['iterations'][0]}-{last['iterations'][1]}): the pilot is "
                      f"{verdict(last)} ({last['difference']:+.1f}, ± {last['margin']:.1f}).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = common.parser("Compare the campaign's RL pilot runs with their default runs (training curves).", trains=False)
    p.add_argument("pilot_set", choices=sorted(PILOTS))
    p.add_argument("--threads", type=int, default=0, help="accepted for the campaign's report call; unused (no TensorFlow)")
    args = p.parse_args(argv)
    data = compare(args.pilot_set, args.results)
    text = markdown(args.pilot_set, data)
    out = args.results / "rl"
    records.write_table(out / f"{args.pilot_set}.json", data, out / f"{args.pilot_set}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
