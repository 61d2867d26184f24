"""The quickstart on several seeds and both recipes: the README's table, from each run's scorecard.

For each seed S: `kubefusion demo init --dir <work>/demo-S --seed S`, then `kubefusion run` of
examples/quickstart.yaml and examples/quickstart-wrpo.yaml on that world (outputs in <work>/runs/...).
Prints one markdown row per (seed, recipe) — held-out accuracy per skill after each stage, the preference
stage's own gain over SFT and the fused target's share of the best source — then the mean and range per
recipe, and checks the quickstart's goals: after the preference stage >= 90% of the best source on every
skill; the preference stage >= +5 points on the skill SFT leaves weakest, and no skill down more than 2.

    PYTHONPATH=operator:trainer .venv/bin/python benchmarks/quickstart_seeds.py --seeds 0 1 2 --work /tmp/qs

A finished run is reused (kubefusion run resumes), so an interrupted table picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"fusechat3": "examples/quickstart.yaml", "wrpo": "examples/quickstart-wrpo.yaml"}
SHARE_OF_BEST = 0.90
MIN_PREFERENCE_GAIN = 0.05
MAX_PREFERENCE_COST = 0.02


def kubefusion(*args: str, cwd: Path) -> float:
    """Run the CLI in `cwd`; returns its wall-clock seconds; raises on failure."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kubefusion_operator", *args], cwd=cwd, text=True)
    if done.returncode:
        raise SystemExit(f"kubefusion {' '.join(args)} failed ({done.returncode}) in {cwd}")
    return time.monotonic() - started


def run_config(recipe: str, seed: int) -> dict[str, Any]:
    """The example FusionRun, pointed at demo-<seed> and its own storage folder."""
    run = yaml.safe_load((REPO / RECIPES[recipe]).read_text())
    text = json.dumps(run).replace('"demo/', f'"demo-{seed}/')
    run = json.loads(text)
    run["metadata"]["name"] = f"{run['metadata']['name']}-s{seed}"
    run["spec"]["storage"] = {"uri": f"runs/{run['metadata']['name']}"}
    return run


TOLERANCE = 1e-9  # accuracies are ratios of prompt counts: 0.83 - 0.78 must count as 5 points


def goals(progression: dict[str, dict[str, Any]]) -> list[str]:
    """The goals this run misses (empty: all met)."""
    missed = []
    for skill, row in progression.items():
        if row["preference"] < SHARE_OF_BEST * row["best_source_accuracy"] - TOLERANCE:
            missed.append(f"{skill} below {SHARE_OF_BEST:.0%} of the best source")
        if row["preference_gain"] < -MAX_PREFERENCE_COST - TOLERANCE:
            missed.append(f"{skill} lost {-100 * row['preference_gain']:.1f} points in the preference stage")
    weakest = min(progression, key=lambda skill: progression[skill]["sft"])
    if progression[weakest]["preference_gain"] < MIN_PREFERENCE_GAIN - TOLERANCE:
        missed.append(f"preference stage +{100 * progression[weakest]['preference_gain']:.1f} on {weakest}")
    return missed


def pct(values: list[float], sign: bool = False) -> str:
    return " / ".join(f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--work", type=Path, default=Path("quickstart-seeds"))
    args = parser.parse_args()

    from kubefusion_trainer.stages.evaluate import stage_progression

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {recipe: [] for recipe in args.recipes}
    for seed in args.seeds:
        seconds = {
            "demo init": kubefusion("demo", "init", "--dir", f"demo-{seed}", "--seed", str(seed), cwd=work)
        }
        for recipe in args.recipes:
            run = run_config(recipe, seed)
            path = work / f"{run['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(run))
            seconds[recipe] = kubefusion("run", "-f", path.name, cwd=work)
            card = json.loads((work / run["spec"]["storage"]["uri"] / "eval" / "scorecard.json").read_text())
            progression = stage_progression(card)
            rows[recipe].append({"seed": seed, "progression": progression, "missed": goals(progression)})
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()), flush=True)

    print(
        "\n| seed / recipe | original | after SFT | after DPO or WRPO | preference stage's gain | best source |"
    )
    print("|---|---|---|---|---|---|")
    for recipe, results in rows.items():
        skills = list(results[0]["progression"])
        columns = ("original", "sft", "preference", "preference_gain", "best_source_accuracy")
        for result in results:
            cells = [
                pct([result["progression"][s][c] for s in skills], sign=c == "preference_gain")
                for c in columns
            ]
            print(f"| {result['seed']}, {recipe} | " + " | ".join(cells) + " |")
        summary = []
        for column in columns:
            per_skill = []
            for skill in skills:
                values = [r["progression"][skill][column] for r in results]
                mean = 100 * sum(values) / len(values)
                per_skill.append(f"{mean:.1f} ({100 * min(values):.1f} to {100 * max(values):.1f})")
            summary.append(" / ".join(per_skill))
        print(f"| mean (range), {recipe} | " + " | ".join(summary) + " |")
    print(f"\nskills: {' / '.join(skills)}; held-out accuracy in %")
    missed = [
        (recipe, r["seed"], m) for recipe, results in rows.items() for r in results for m in r["missed"]
    ]
    for recipe, seed, what in missed:
        print(f"goal missed: seed {seed}, {recipe}: {what}")
    print("every goal met" if not missed else f"{len(missed)} goal(s) missed")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
