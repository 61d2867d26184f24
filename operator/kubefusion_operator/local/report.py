"""runs/<name>/reports/report.md and its PNG plots (matplotlib, Agg), from the run's files alone.

Sections: the dataset table (prompts / SFT rows / preference pairs per dataset, as in the FuseChat-3.0
paper), reward distributions per source, training loss and reward-margin curves (trl's
trainer_state.json log_history), and the scorecard. Each section is skipped when its inputs are missing,
so a report of a half-finished run still renders.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_write_text
from kubefusion_trainer.config import FusionConfig
from kubefusion_trainer.layout import RunLayout

# --- collecting (files -> plain data) ---


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _count_lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def dataset_table(layout: RunLayout, spec: FusionConfig) -> list[dict[str, Any]]:
    """Per dataset: prompts prepared, by split, SFT rows and preference rows built."""
    second = "wrpo" if spec.recipe == "wrpo" else "dpo"
    table = []
    for dataset in spec.datasets:
        prompts = layout.prompts_file(dataset.name)
        splits: dict[str, int] = defaultdict(int)
        if prompts.exists():
            for row in _jsonl(prompts):
                splits[row.get("split", "?")] += 1
        table.append(
            {
                "dataset": dataset.name,
                "domain": dataset.domain,
                "prompts": sum(splits.values()),
                "splits": dict(splits),
                "sft": _count_lines(layout.dataset_file("sft", dataset.name)),
                "pairs": _count_lines(layout.dataset_file(second, dataset.name)),
                "pair_kind": second,
            }
        )
    return table


def source_rewards(layout: RunLayout, spec: FusionConfig) -> dict[str, dict[str, list[float]]]:
    """dataset -> source -> rewards of its scored answers."""
    rewards: dict[str, dict[str, list[float]]] = {}
    for dataset in spec.datasets:
        per_source: dict[str, list[float]] = {}
        for source in spec.dataset_sources(dataset):
            folder = layout.scores_dir("sources", source.name, dataset.name)
            values = [
                float(r["reward"])
                for shard in sorted(folder.glob("shard-*.jsonl"))
                for r in _jsonl(shard)
                if r.get("reward") is not None
            ]
            if values:
                per_source[source.name] = values
        if per_source:
            rewards[dataset.name] = per_source
    return rewards


def source_accuracy(layout: RunLayout, spec: FusionConfig) -> dict[str, dict[str, float]]:
    """dataset -> source -> share of its checked answers that were correct (scored samples)."""
    result: dict[str, dict[str, float]] = {}
    for dataset in spec.datasets:
        for source in spec.dataset_sources(dataset):
            folder = layout.scores_dir("sources", source.name, dataset.name)
            checked = [
                bool(r["correct"])
                for shard in sorted(folder.glob("shard-*.jsonl"))
                for r in _jsonl(shard)
                if r.get("correct") is not None
            ]
            if checked:
                result.setdefault(dataset.name, {})[source.name] = sum(checked) / len(checked)
    return result


def training_logs(layout: RunLayout, stages: list[str]) -> dict[str, list[dict[str, Any]]]:
    """stage -> trl log_history from the most advanced trainer_state.json under train/<stage>/."""
    logs = {}
    for stage in stages:
        states = list(layout.train_dir(stage).glob("**/trainer_state.json"))  # type: ignore[arg-type]
        best: list[dict[str, Any]] = []
        for path in states:
            try:
                history = json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
            except (ValueError, OSError):
                continue
            if len(history) > len(best):
                best = history
        if best:
            logs[stage] = best
    return logs


def curve(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(e.get("step", i)), float(e[key])) for i, e in enumerate(history) if key in e]
    return [p[0] for p in points], [p[1] for p in points]


# --- rendering ---


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render_markdown(
    name: str,
    spec: FusionConfig,
    table: list[dict[str, Any]],
    sample_accuracy: dict[str, dict[str, float]],
    card: dict[str, Any] | None,
    plots: dict[str, str],
    isolation: dict[str, str] | None = None,
) -> str:
    lines = [
        f"# Fusion run `{name}`",
        "",
        f"Recipe **{spec.recipe.value}**: sources {', '.join(s.name for s in spec.sources)} "
        f"-> target `{spec.target.model}`.",
        "",
    ]
    if card:
        models = card["models"]
        datasets = list(card["datasets"])
        lines += [
            "## Scorecard (held-out prompts, greedy answers)",
            "",
            "Accuracy per dataset; *win* = share of prompts where the reward model prefers the model's "
            "answer over the original target's (ties count half).",
            "",
            "| model | "
            + " | ".join(f"{d} accuracy" for d in datasets)
            + " | "
            + " | ".join(f"{d} win" for d in datasets)
            + " |",
            "|---" * (1 + 2 * len(datasets)) + "|",
        ]
        for model in models:
            acc = [_pct(card["datasets"][d]["accuracy"].get(model)) for d in datasets]
            win = [
                _pct(card["datasets"][d]["win_rate"].get(model)) if model != "original" else "-"
                for d in datasets
            ]
            lines.append(f"| {model} | " + " | ".join(acc) + " | " + " | ".join(win) + " |")
        prompts = ", ".join(f"{d}: {card['datasets'][d]['prompts']}" for d in datasets)
        lines += ["", f"Held-out prompts per dataset: {prompts}.", ""]
        lines += _progression_section(card)
        if "scorecard" in plots:
            lines += [f"![scorecard]({plots['scorecard']})", ""]
    lines += [
        "## Datasets",
        "",
        "| dataset | domain | prompts | SFT rows | preference rows | held out |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['dataset']} | {row['domain']} | {row['prompts']} | "
            f"{row['sft'] if row['sft'] is not None else '-'} | "
            f"{row['pairs'] if row['pairs'] is not None else '-'} ({row['pair_kind']}) | "
            f"{row['splits'].get('eval', 0)} |"
        )
    lines.append("")
    if sample_accuracy:
        lines += ["## Sources' sampled answers", "", "Share of sampled answers that were correct:", ""]
        for dataset, per_source in sample_accuracy.items():
            lines.append(f"- {dataset}: " + ", ".join(f"{s} {_pct(v)}" for s, v in per_source.items()))
        lines.append("")
    if isolation:
        lines += ["## Code sandbox", "", "How untrusted code answers were isolated, per step:", ""]
        lines += [f"- {step}: {how}" for step, how in isolation.items()]
        lines.append("")
    if "rewards" in plots:
        lines += ["## Reward distributions per source", "", f"![rewards]({plots['rewards']})", ""]
    if "training" in plots:
        lines += [
            "## Training",
            "",
            "Loss and (preference stages) reward margin per logged step.",
            "",
            f"![training]({plots['training']})",
            "",
        ]
    return "\n".join(lines)


def _progression_section(card: dict[str, Any]) -> list[str]:
    """What each stage added, per skill: original -> SFT -> preference stage, beside the best source."""
    from kubefusion_trainer.stages.evaluate import stage_progression

    progression = stage_progression(card)
    if not progression:
        return []
    stage = next(iter(progression.values()))["preference_stage"] or "preference stage"
    lines = [
        "## What each stage added",
        "",
        f"Held-out accuracy per skill through the stages; the last column is the {stage} stage's own gain "
        "over SFT, in points.",
        "",
        f"| skill | original | after SFT | after {stage} | best source | {stage} gain |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, row in progression.items():
        best = f"{row['best_source']} {_pct(row['best_source_accuracy'])}" if row["best_source"] else "n/a"
        gain = row["preference_gain"]
        lines.append(
            f"| {dataset} | {_pct(row['original'])} | {_pct(row['sft'])} | {_pct(row['preference'])} | "
            f"{best} | {'n/a' if gain is None else f'{100 * gain:+.1f}'} |"
        )
    return [*lines, ""]


def plot_rewards(rewards: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rewards), figsize=(5 * len(rewards), 3.5), squeeze=False)
    for ax, (dataset, per_source) in zip(axes[0], rewards.items(), strict=True):
        for source, values in per_source.items():
            ax.hist(values, bins=30, alpha=0.6, label=source)
        ax.set_title(f"rewards: {dataset}")
        ax.set_xlabel("reward")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_training(logs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (stage, key)
        for stage, history in logs.items()
        for key in ("loss", "rewards/margins")
        if curve(history, key)[0]
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (stage, key) in zip(axes[0], panels, strict=True):
        steps, values = curve(logs[stage], key)
        ax.plot(steps, values, marker=".")
        ax.set_title(f"{stage}: {key}")
        ax.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_scorecard(card: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(card["datasets"])
    models = card["models"]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(datasets) * max(len(models), 1) / 3, 3.5))
    for i, model in enumerate(models):
        values = [card["datasets"][d]["accuracy"].get(model) or 0.0 for d in datasets]
        ax.bar([x + i * width for x in range(len(datasets))], values, width, label=model)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(datasets))], datasets)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(layout: RunLayout, spec: FusionConfig, name: str) -> Path:
    """Collect, plot and write report.md; returns its path. Without matplotlib: tables only."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        text = render_markdown(
            name,
            spec,
            dataset_table(layout, spec),
            source_accuracy(layout, spec),
            _load_scorecard(layout),
            {},
            sandbox_isolation(layout),
        )
        atomic_write_text(layout.report, text + "\n\n(No plots: install matplotlib, the `local` extra.)\n")
        return layout.report
    plots: dict[str, str] = {}
    rewards = source_rewards(layout, spec)
    if rewards:
        plot_rewards(rewards, layout.plot("rewards"))
        plots["rewards"] = layout.plot("rewards").name
    stages = ["sft", "wrpo" if spec.recipe == "wrpo" else "dpo"]
    if plot_training(training_logs(layout, stages), layout.plot("training")):
        plots["training"] = layout.plot("training").name
    card = _load_scorecard(layout)
    if card:
        plot_scorecard(card, layout.plot("scorecard"))
        plots["scorecard"] = layout.plot("scorecard").name
    text = render_markdown(
        name,
        spec,
        dataset_table(layout, spec),
        source_accuracy(layout, spec),
        card,
        plots,
        sandbox_isolation(layout),
    )
    atomic_write_text(layout.report, text + "\n")
    return layout.report


SANDBOXED_STEPS = ("verify-code-sources", "score-sources", "verify-code-target", "score-target", "evaluate")


def sandbox_isolation(layout: RunLayout) -> dict[str, str]:
    """The code sandbox isolation each step recorded (steps that ran code answers)."""
    found = {}
    for step in SANDBOXED_STEPS:
        path = layout.stage_record(step)
        if path.exists():
            how = json.loads(path.read_text(encoding="utf-8")).get("sandbox_isolation")
            if how:
                found[step] = str(how)
    return found


def _load_scorecard(layout: RunLayout) -> dict[str, Any] | None:
    return json.loads(layout.scorecard.read_text(encoding="utf-8")) if layout.scorecard.exists() else None
