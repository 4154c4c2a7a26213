"""PNG plots of a run: the results matrix as a heatmap, and old-task retention against the new task's metric."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.summary import POLICY  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def matrix_heatmap(results: dict) -> bytes:
    """Rows: zero-shot, then after each step; columns: the stream's tasks; cells: each task's primary metric."""
    tasks = results["tasks"]
    rows = [results["zero_shot"], *results["matrix"]]
    labels = ["zero-shot"] + [f"after {t} ({m})" for t, m in zip(tasks, results["methods"])]
    values = [[float("nan") if v is None else v for v in row] for row in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks), 0.9 + 0.5 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(0.01, max(v for r in values for v in r if v == v)))
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < 0.5 * image.norm.vmax
                        else "black", fontsize=8)
            else:  # evaluate: seen, or a task that joined a resumed stream: say so in the cell
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.92", hatch="//", edgecolor="0.7"))
                ax.text(j, i, "not\nevaluated", ha="center", va="center", color="0.35", fontsize=7)
    names = results["metric_names"]
    ax.set_xticks(range(len(tasks)), [f"{t} ({names[t]})" for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_title(f"{results['name']} (policy {results['policy']})")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _png(fig)


def retention_scatter(points: list[dict], title: str, metric: str) -> bytes:
    """Old-task retention (y) against the new task's metric (x): one panel per composition policy, one colour
    and marker per setting named in a legend (labels beside the points overlap where settings tie).

    ``points``: {"setting", "policy", "new_metric", "old_retention"} and, over seeds, "new_interval" and
    "retention_interval" (half-widths of 95% intervals, drawn as bars)."""
    policies = list(dict.fromkeys(p["policy"] for p in points))
    settings = list(dict.fromkeys(p["setting"].replace(POLICY + p["policy"], "") for p in points))
    style = {name: (f"C{i % 10}", "osD^vP*X"[i // 10 % 8]) for i, name in enumerate(settings)}
    fig, axes = plt.subplots(1, len(policies), figsize=(1.6 + 3.6 * len(policies), 3.8), squeeze=False, sharey=True)
    for ax, policy in zip(axes[0], policies):
        for p in points:
            if p["policy"] != policy or p["old_retention"] is None or p["new_metric"] is None:
                continue
            colour, marker = style[p["setting"].replace(POLICY + policy, "")]
            ax.errorbar(p["new_metric"], p["old_retention"], xerr=p.get("new_interval") or 0.0,
                        yerr=p.get("retention_interval") or 0.0, fmt=marker, color=colour, ms=6, capsize=2,
                        alpha=0.85)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"new-task {metric}")
        ax.set_title(f"policy {policy}" if len(policies) > 1 else title, fontsize=10)
    axes[0][0].set_ylabel("old-task retention (final / when learned)")
    handles = [plt.Line2D([], [], color=c, marker=m, ls="") for c, m in style.values()]
    fig.legend(handles, list(style), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if len(policies) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def frontier_plot(curves: dict[str, list[tuple]], title: str, metric: str,
                  levels: list[float] = ()) -> bytes:
    """The retention-plasticity frontier: per swept setting, a line through its learning rates with
    x = the new task's metric and y = old-task retention, each point labelled with its rate.

    ``curves``: {setting: [(lr, x, x half-width or None, y, y half-width or None)]} (half-widths of 95%
    intervals over seeds, drawn as bars); ``levels``: matched new-task levels, drawn as dotted lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for setting, points in curves.items():
        points = sorted(p for p in points if p[1] is not None and p[3] is not None)
        ax.errorbar([p[1] for p in points], [p[3] for p in points], xerr=[p[2] or 0.0 for p in points],
                    yerr=[p[4] or 0.0 for p in points], marker="o", ms=4, lw=1.2, capsize=2, label=setting)
        for lr, x, _, y, _ in points:
            ax.annotate(f"{lr:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for level in levels:
        ax.axvline(level, color="grey", lw=0.7, ls=":")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"new-task {metric}")
    ax.set_ylabel("old-task retention (final / when learned)")
    ax.set_title(f"{title}: learning rate swept")
    ax.legend(fontsize=7)
    return _png(fig)


def accuracy_against_shots(panels: dict[str, dict], methods: list[str], labels: list[str], shots: list,
                           title: str, metric: str = "accuracy") -> bytes:
    """One panel per entry of ``panels`` ({method: {shots: (mean, half-width, n)}}): a line per method over
    the shot counts ``shots`` (evenly spaced, named by ``labels``), 95% intervals as error bars."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False, sharey=True)
    position = {k: i for i, k in enumerate(shots)}
    for ax, (name, table) in zip(axes[0], panels.items()):
        for method in methods:
            points = [(position[k], v) for k, v in table.get(method, {}).items()]
            if not points:
                continue
            points.sort(key=lambda p: p[0])
            ax.errorbar([x for x, _ in points], [v[0] for _, v in points], yerr=[v[1] or 0.0 for _, v in points],
                        marker="o", ms=3, capsize=2, lw=1.2, label=method)
        ax.set_xticks(range(len(shots)), labels)
        ax.set_xlabel("shots per class")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _png(fig)


def training_curves(panels: dict[str, dict[str, list[float]]], title: str) -> bytes:
    """One panel per entry of ``panels`` ({method: loss per step}): each method's loss, faint, and its moving
    average over a twentieth of the schedule, so a curve that has flattened reads as flat."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for method, losses in curves.items():
            window = max(1, len(losses) // 20)
            smooth = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                      for i in range(len(losses))]
            steps = range(1, len(losses) + 1)
            (line,) = ax.plot(steps, smooth, lw=1.3, label=method)
            ax.plot(steps, losses, lw=0.5, alpha=0.25, color=line.get_color())
        ax.set_xlabel("optimizer step")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    return _png(fig)
