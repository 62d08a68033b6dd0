"""The report's pictures (matplotlib, no display): each function returns PNG bytes.

Colours are fixed per model name order, so a method keeps its colour in every figure.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HEATMAP_GAMMA = 0.5  # colour ~ attention^0.5: weak links stay visible next to the [CLS]/[SEP] mass
TEACHER_COLOUR = "#222222"


def colours(methods: list[str]) -> dict[str, str]:
    cycle = plt.get_cmap("tab10").colors
    return {"teacher": TEACHER_COLOUR} | {m: matplotlib.colors.to_hex(cycle[i % len(cycle)]) for i, m in enumerate(methods)}


def png(fig) -> bytes:
    """Deterministic PNG bytes (no timestamp or software metadata), then close the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def training_curves(curves: dict[str, list[pd.DataFrame]], methods: list[str], metric: str = "accuracy", label: str = "accuracy") -> bytes:
    """Validation `metric` and training loss per epoch: the teacher, and per method the mean over
    seeds (line) with the range of the seeds (band)."""
    col = colours(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, frames in curves.items():
        for ax, column in zip(axes, (f"val_{metric}", "train_loss")):
            stacked = np.stack([f[column].to_numpy() for f in frames])  # (seeds, epochs)
            epochs = frames[0]["epoch"].to_numpy()
            ax.plot(epochs, stacked.mean(0), marker="o", ms=3, color=col[name], label=name, lw=2 if name == "teacher" else 1.5)
            if len(frames) > 1:
                ax.fill_between(epochs, stacked.min(0), stacked.max(0), color=col[name], alpha=0.15, lw=0)
    axes[0].set(title=f"Validation {label}", xlabel="epoch", ylabel=label)
    axes[1].set(title="Training loss (weighted sum of the method's terms)", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    return png(fig)


def accuracy_vs_latency(points: pd.DataFrame, methods: list[str], metric: str = "accuracy", label: str = "accuracy") -> bytes:
    """Every model: test `metric` against batch-1 latency; a small dot per seed, a large marker
    with standard-deviation bars per method. `points`: model, method, latency_ms, `metric`."""
    col = colours(methods)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, group in points.groupby("method", sort=False):
        x, y = group["latency_ms"], group[metric]
        ax.scatter(x, y, s=14, color=col[name], alpha=0.5)
        err = (x.std(ddof=1), y.std(ddof=1)) if len(group) > 1 else (None, None)
        ax.errorbar(x.mean(), y.mean(), xerr=err[0], yerr=err[1], fmt="*" if name == "teacher" else "o", ms=11 if name == "teacher" else 8,
                    color=col[name], capsize=3, label=f"{name} ({len(group)} seed{'s' if len(group) > 1 else ''})")
        ax.annotate(name, (x.mean(), y.mean()), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set(xlabel="batch-1 CPU latency, one thread (ms)", ylabel=f"test {label}", title=f"{label[0].upper()}{label[1:]} versus latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png(fig)


def attention_heatmaps(maps: dict[str, dict[tuple[int, int], np.ndarray]], tokens: list[str], title: str, queries: list[str] | None = None) -> bytes:
    """One row per mapped (teacher_layer, student_layer) pair, one column per model: the
    head-averaged attention (query rows, key columns) on one example, tokens on the axes, on one
    colour scale for the figure, a power scale with exponent HEATMAP_GAMMA.
    `maps[model][(t, s)]`: (T, T) for the layer the model has in that pair; with `queries` (the
    target tokens of a cross-attention map), (m, n): target rows by source (`tokens`) columns."""
    models = list(maps)
    pairs = list(maps[models[0]])
    n = len(tokens)
    rows = queries if queries is not None else tokens
    q = len(rows)
    vmax = max(float(m[:q, :n].max()) for layers in maps.values() for m in layers.values())  # one colour scale for the figure
    # square-root scale: most mass sits on [CLS] and [SEP]; on a linear scale the rest of the map is black
    norm = matplotlib.colors.PowerNorm(gamma=HEATMAP_GAMMA, vmin=0.0, vmax=vmax)
    fig, axes = plt.subplots(len(pairs), len(models), figsize=(2.6 * len(models) + 0.8, 2.6 * len(pairs) + 0.6), squeeze=False)
    for r, pair in enumerate(pairs):
        for c, model in enumerate(models):
            ax = axes[r][c]
            layer = pair[0] if model == "teacher" else pair[1]
            ax.imshow(maps[model][pair][:q, :n], cmap="viridis", norm=norm, aspect="equal", interpolation="nearest")
            ax.set_title(f"{model}, layer {layer}", fontsize=8)
            ax.set_xticks(range(n), tokens if r == len(pairs) - 1 else [""] * n, rotation=90, fontsize=5)
            ax.set_yticks(range(q), rows if c == 0 else [""] * q, fontsize=5)
            ax.tick_params(length=0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png(fig)


def pooling_rows(rows: dict[str, np.ndarray], tokens: list[str], title: str, layer: int) -> bytes:
    """One row per model: the teacher's [CLS] query row at `layer` (head-averaged) and each BiLSTM's
    attention-pooling weights on one example, tokens along the x axis, on one colour scale, a
    power scale with exponent HEATMAP_GAMMA. `rows[model]`: (n,)."""
    n = len(tokens)
    table = np.stack([np.asarray(r[:n], dtype=np.float32) for r in rows.values()])  # (M, n)
    norm = matplotlib.colors.PowerNorm(gamma=HEATMAP_GAMMA, vmin=0.0, vmax=float(table.max()))
    fig, ax = plt.subplots(figsize=(0.22 * n + 2.0, 0.35 * len(rows) + 1.2))
    ax.imshow(table, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), [f"teacher [CLS], layer {layer}" if m == "teacher" else f"{m}, pooling" for m in rows], fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return png(fig)


def attention_figures(examples: list[dict]) -> dict[str, bytes]:
    """For each example evaluate wrote (reports/attention.json): `attention_<example>.png` from
    its per model and pair `t<l>-s<l>` head-averaged (n, n) maps, and `pooling_<example>.png`
    from its pooling rows beside the teacher's [CLS] row, when it has them."""
    out = {}
    for h in examples:
        if h.get("maps"):
            maps = {model: {tuple(map(int, key[1:].split("-s"))): np.asarray(m, dtype=np.float32) for key, m in layers.items()}
                    for model, layers in h["maps"].items()}
            out[f"attention_{h['example']}.png"] = attention_heatmaps(maps, h["tokens"], h["title"], h.get("target_tokens"))
        if h.get("rows"):
            out[f"pooling_{h['example']}.png"] = pooling_rows(h["rows"], h["tokens"], h["title"], h["row_layer"])
    return out
