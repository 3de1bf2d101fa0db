"""The benchmark's ratios as a chart: ``python benchmarks/compare.py --chart FILE``.

One panel per op (training forward, backward, evaluation), one group of bars per case
(shape and dtype at the run's largest thread count), one bar per comparison: cybn ÷ torch,
cybn ÷ NumPy, cybn ÷ speed of light. The y axis is logarithmic, so 0.5× and 2× are the same
distance from the line at 1 (below it, cybn is faster). Drawn with matplotlib's object API
and the Agg canvas (no GUI backend); matplotlib is needed only for the chart.
"""

COMPARISONS = (("torch", "cybn ÷ torch", "#d62728"), ("numpy", "cybn ÷ NumPy", "#1f77b4"),
               ("sol", "cybn ÷ speed of light", "#7f7f7f"))
OP_TITLES = {"fwd_train": "training forward", "bwd": "backward", "fwd_eval": "evaluation"}


def draw(rows, title, path):
    """Write the chart of `rows` to `path` (format by suffix: .png, .svg, .pdf).

    Parameters
    ----------
    rows : list of dict
        One per (case, op): ``label`` (the case, e.g. "(4096, 1024) f32"), ``op`` (a key
        of OP_TITLES) and ``ratios`` (dict: "torch"/"numpy"/"sol" -> ratio or None).
    title : str
        The figure's title (machine, threads, date).
    path : str or path-like
        Output file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ops = [op for op in OP_TITLES if any(r["op"] == op for r in rows)]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = Figure(figsize=(max(8.0, 0.55 * len(labels) + 2.5), 3.2 * len(ops) + 0.8),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ops), 1, squeeze=False, sharex=True)[:, 0]
    width = 0.8 / len(COMPARISONS)
    values = [v for r in rows for v in r["ratios"].values() if v]
    lo = min(values + [0.5]) / 1.3
    hi = max(values + [2.0]) * 1.3
    for ax, op in zip(axes, ops, strict=True):
        by_label = {r["label"]: r["ratios"] for r in rows if r["op"] == op}
        for k, (key, name, color) in enumerate(COMPARISONS):
            xs, ys = [], []
            for i, label in enumerate(labels):
                ratio = by_label.get(label, {}).get(key)
                if ratio:
                    xs.append(i + (k - (len(COMPARISONS) - 1) / 2) * width)
                    ys.append(ratio)
            # Bars grow from 1 (parity) up or down, so "faster" and "slower" read at a glance.
            ax.bar(xs, [y - 1 for y in ys], width=width, bottom=1, color=color, label=name)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(FixedLocator(
            [m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.set_ylabel("time ratio (log)")
        ax.set_title(f"{OP_TITLES[op]}: cybn's time ÷ the others' (lower is faster)",
                     fontsize=10)
        ax.grid(True, axis="y", which="major", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, ncols=len(COMPARISONS), fontsize=9, loc="outside lower center")
    axes[-1].set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)

