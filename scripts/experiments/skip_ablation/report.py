"""Figures and report.md of the skip-connection ablation (matplotlib's backend is chosen by its command line).

The plain-words findings are computed from the numbers with fixed rules, so the text
claims only what the run measured: a difference between two arms counts when it has
the same sign in every seed and is larger than :data:`DICE_MARGIN` (Dice) in every
seed; otherwise the text says the arms are not distinguishable in this run.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.io.pictures import LABEL_COLOURS

#: Smallest Dice difference (in every seed, same sign) the findings call a difference.
DICE_MARGIN = 0.005
ARM_COLOURS = {"concat": "#1f77b4", "none": "#d62728", "lowpass": "#2ca02c", "add": "#9467bd"}


def canonical(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A scan's voxels in RAS+ order (float32, trailing singleton axes dropped) and its voxel size."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return np.asarray(data, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def _arm_colour(arm: str) -> str:
    return ARM_COLOURS.get(arm, "#7f7f7f")


# ----------------------------------------------------------------------------- figures


def plot_dice_vs_distance(report: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = report["settings"]["distance_bin_names"]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, res in report["arms"].items():
        mean = np.array([np.nan if v is None else v for v in res["mean"]["boundary_dice"]], dtype=float)
        std = res["std"]["boundary_dice"]
        err = None if std is None else np.array([np.nan if v is None else v for v in std], dtype=float)
        axes[0].errorbar(x, mean, yerr=err, marker="o", capsize=3, label=arm, color=_arm_colour(arm))
        diffs = res.get("vs_concat", {}).get("boundary_dice")
        if diffs:
            d = np.array([[np.nan if v is None else v for v in row] for row in diffs], dtype=float)
            axes[1].plot(x, np.nanmean(d, axis=0), marker="o", label=f"{arm} - concat", color=_arm_colour(arm))
            for row in d:
                axes[1].scatter(x, row, s=12, alpha=0.5, color=_arm_colour(arm))
    axes[0].set_ylabel("Dice (pooled over tissues and held-out subjects)")
    axes[0].set_title("Dice by distance to the nearest tissue boundary")
    axes[1].axhline(0.0, color="black", lw=0.8)
    axes[1].set_ylabel("Dice difference to concat (same seed); dots: seeds")
    axes[1].set_title("What each change costs, by distance")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20)
        ax.set_xlabel("distance of the voxel to the nearest voxel of another reference label")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_train_vs_heldout(report: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, ax = plt.subplots(figsize=(2.2 * len(arms) + 2, 4.2))
    for i, arm in enumerate(arms):
        res = report["arms"][arm]
        for j, (key, label) in enumerate((("train_dice", "training subjects"), ("heldout_dice", "held-out subjects"))):
            values = [r[key] for r in res["per_seed"] if r.get(key) is not None]
            pos = i + (j - 0.5) * 0.35
            ax.bar(
                pos,
                np.mean(values) if values else 0.0,
                width=0.33,
                color=_arm_colour(arm),
                alpha=0.45 if j == 0 else 0.9,
                label=label if i == 0 else None,
                edgecolor="black",
            )
            ax.scatter([pos] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(arms)), arms)
    lows = [
        r[k]
        for res in report["arms"].values()
        for r in res["per_seed"]
        for k in ("train_dice", "heldout_dice")
        if r.get(k) is not None
    ]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.0, max(lows) + 0.02))
    ax.set_ylabel("mean foreground Dice")
    ax.set_title("Training-set vs held-out Dice (light: training subjects; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_slices(report: dict, path: Path, case) -> Path:
    """One axial slice of a held-out case: the reference, then each arm's prediction and its errors (seed 0)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    image, zooms = canonical(Path(case.images[0]))
    ref, _ = canonical(Path(case.label))
    ref = np.rint(ref).astype(np.int32)
    fg = np.argwhere(ref > 0)
    z = int(round(fg[:, 2].mean())) if len(fg) else ref.shape[2] // 2
    n = max(int(ref.max()), 1)
    cmap = ListedColormap(
        [(0, 0, 0, 0)] + [LABEL_COLOURS[(i - 1) % len(LABEL_COLOURS)] + (0.5,) for i in range(1, n + 1)]
    )
    errors = ListedColormap([(0, 0, 0, 0), (1.0, 0.0, 0.0, 0.85)])
    inside = image[image != 0]
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    aspect = zooms[1] / zooms[0]
    arms = list(report["arms"])
    fig, axes = plt.subplots(2, len(arms) + 1, figsize=(3.2 * (len(arms) + 1), 6.6))

    def show(ax, labels2d, colours, vmax, title):
        ax.imshow(
            image[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest"
        )
        if labels2d is not None:
            ax.imshow(
                labels2d.T, cmap=colours, origin="lower", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest"
            )
        ax.set_title(title, fontsize=9)
        ax.axis("off")

    show(axes[0, 0], ref[:, :, z], cmap, n, f"{case.case_id}: reference")
    show(axes[1, 0], None, cmap, n, f"scan (axial slice {z})")
    for k, arm in enumerate(arms, start=1):
        run = report["arms"][arm]["per_seed"][0]
        pred, _ = canonical(Path(run["run_dir"]) / "heldout_masks" / f"{case.case_id}.nii.gz")
        pred = np.rint(pred).astype(np.int32)
        wrong = (pred[:, :, z] != ref[:, :, z]).astype(np.int32)
        show(axes[0, k], pred[:, :, z], cmap, n, f"{arm} (seed 0): prediction")
        show(axes[1, k], wrong, errors, 1, f"{arm}: errors ({int(wrong.sum())} voxels in this slice)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_figures(report: dict, out: Path, case) -> dict[str, str]:
    out = Path(out)
    files = {
        "dice_vs_distance": plot_dice_vs_distance(report, out / "dice_vs_distance.png"),
        "train_vs_heldout": plot_train_vs_heldout(report, out / "train_vs_heldout.png"),
        "slices": plot_slices(report, out / "slices.png", case),
    }
    return {k: v.name for k, v in files.items()}


# ----------------------------------------------------------------------------- report.md


def _pm(mean, std, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _seeds(values: list[float], digits: int = 3) -> str:
    return ", ".join(f"{v:+.{digits}f}" for v in values)


def direction(diffs: list[float], margin: float = DICE_MARGIN) -> str:
    """'up' / 'down' when every seed moved the same way by more than ``margin``, else 'unclear'."""
    if diffs and all(d > margin for d in diffs):
        return "up"
    if diffs and all(d < -margin for d in diffs):
        return "down"
    return "unclear"


def _last_bin_with_data(values: list) -> int:
    idx = [i for i, v in enumerate(values) if v is not None]
    return idx[-1] if idx else 0


def findings(report: dict) -> list[str]:
    """Plain-words statements, each one backed by the paired per-seed differences."""
    arms = report["arms"]
    n_seeds = len(report["settings"]["seeds"])
    names = report["settings"]["distance_bin_names"]
    every = "every seed" if n_seeds > 1 else "the one seed"
    out = []
    if "concat" not in arms:
        return ["No concat arm: nothing to compare against."]
    base = arms["concat"]["mean"]
    out.append(
        f"With skips (concat) the network reached held-out Dice {base['heldout_dice']:.3f} and training-set Dice "
        f"{base['train_dice']:.3f} (gap {base['gap']:+.3f})."
        + (
            " The gap is small: at this budget the network with skips does not overfit its training subjects."
            if base["gap"] is not None and abs(base["gap"]) < 0.02
            else ""
        )
    )
    if n_seeds < 2:
        out.append("One seed only: no spread across seeds, so every difference below is indicative, not established.")
    loss = {}
    for arm, res in arms.items():
        d = res.get("vs_concat")
        if not d or not d["heldout_dice"]:
            continue
        held, train, gap = d["heldout_dice"], d["train_dice"], d["gap"]
        line = (
            f"**{arm} − concat** (per seed): held-out Dice {_seeds(held)}, training-set Dice {_seeds(train)}, "
            f"gap {_seeds(gap)}, surface Dice at 1 mm {_seeds(d['surface_dice'])}, HD95 {_seeds(d['hd95'], 2)} mm "
            f"(lower is better)."
        )
        h, t, g = direction(held), direction(train), direction(gap)
        if h == "down" and t == "down":
            line += (
                " Lower on the training subjects as well as on the held-out ones: it fits its own training data worse."
            )
        elif h == "unclear":
            line += f" Held-out Dice does not differ from concat by more than {DICE_MARGIN} consistently across seeds."
        if g == "up":
            line += " The train − held-out gap is wider than with concat skips."
        elif g == "down":
            line += " The train − held-out gap is narrower than with concat skips."
        else:
            line += f" The gap does not change by more than {DICE_MARGIN} consistently."
        bd = d["boundary_dice"]
        last = _last_bin_with_data(arms["concat"]["mean"]["boundary_dice"])
        at, deep = [row[0] for row in bd], [row[last] for row in bd]
        if all(v is not None for v in at + deep):
            line += (
                f" At the boundary ({names[0]}) Dice changed by {_seeds(at)}; deep inside ({names[last]}) by "
                f"{_seeds(deep)}."
            )
            if all(a < dp - DICE_MARGIN for a, dp in zip(at, deep)):
                line += f" The loss is larger at the boundary than deep inside in {every}."
        out.append(line)
        loss[arm] = held
    if "none" in loss:
        g = direction(arms["none"]["vs_concat"]["gap"])
        verdict = {
            "up": "Cutting the skips widened the gap: what the regulariser hypothesis predicts.",
            "down": "Cutting the skips narrowed the gap: the opposite of what the regulariser hypothesis predicts.",
            "unclear": "Cutting the skips did not widen the train − held-out gap: this run gives no support to the "
            "regulariser hypothesis (it cannot rule out a regularising effect in longer trainings or on "
            "fewer subjects, where a network has the chance to overfit).",
        }[g]
        out.append("**Regulariser hypothesis.** " + verdict)
        if direction(loss["none"]) == "down" and direction(arms["none"]["vs_concat"]["train_dice"]) == "down":
            out.append(
                "**Detail hypothesis.** Without skips Dice fell on training and held-out subjects alike, which "
                "is what the detail hypothesis predicts."
            )
    if "none" in loss and "lowpass" in loss:
        full = arms["concat"]["mean"]["heldout_dice"] - arms["none"]["mean"]["heldout_dice"]
        if direction(loss["none"]) == "down":
            kept = (arms["lowpass"]["mean"]["heldout_dice"] - arms["none"]["mean"]["heldout_dice"]) / full
            steps = [r["steps"] for r in arms["lowpass"]["per_seed"]], [r["steps"] for r in arms["concat"]["per_seed"]]
            out.append(
                f"**Low-pass skips** (the short path kept, the detail finer than the bottleneck grid removed) recovered "
                f"{100 * kept:.0f} % of the held-out Dice that cutting the skips lost (means over seeds: concat − none "
                f"= {full:+.3f}; {'no better than no skips at all; ' if kept <= 0 else ''}steps per seed: lowpass "
                f"{', '.join(map(str, steps[0]))}, concat {', '.join(map(str, steps[1]))}). "
                + (
                    "Most of the skips' benefit needs the fine detail."
                    if kept < 0.25
                    else "Most of the skips' benefit survives without the fine detail."
                    if kept > 0.75
                    else "Part of the benefit survives without the fine detail, part needs it."
                )
            )
        else:
            out.append(
                "Cutting the skips did not lower held-out Dice consistently, so the low-pass arm has no loss "
                "to explain in this run."
            )
    steps = {a: r["mean"]["steps"] for a, r in arms.items()}
    out.append(
        "The budget is wall time, not steps: mean steps per run "
        + ", ".join(f"{a} {s:.0f}" for a, s in steps.items())
        + " (an arm with cheaper steps takes more of them)."
    )
    return out


def write_markdown(report: dict, path: Path) -> Path:
    s = report["settings"]
    arms = report["arms"]
    lines = [
        "# Skip-connection ablation",
        "",
        f"Question: {report['question']}",
        "",
        f"Budget: {s['minutes_per_run']:g} min of training per arm and seed, seeds {s['seeds']}, arms "
        f"{', '.join(s['arms'])}; config {s['config']}; data {s['data']} "
        + (f"({s['demo_subjects']} demo subjects, seed {s['data_seed']}); " if s["demo_subjects"] else "; ")
        + f"held out: {', '.join(s['heldout_cases'])}; device {s['device']}, {s['torch_threads']} torch thread(s), "
        f"{s['cpu_count']} CPU cores; wall time {report['wall_seconds'] / 60:.1f} min"
        + (f" ({report['runs_reused']} run(s) reused from an earlier invocation)" if report["runs_reused"] else "")
        + f". Mean ± {s['std']}. HD95: mean of the finite values (a tissue never predicted gives inf); far false "
        "positives: tissue predicted in the background more than one boundary bin from any tissue.",
        "",
        "| arm | steps | held-out Dice | training-set Dice | gap (train − held-out) | HD95 (mm; finite) | HD95 inf per run "
        "| surface Dice 1 mm | surface Dice 2 mm | far false positives (voxels per subject) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, res in arms.items():
        m, sd = res["mean"], res["std"]
        lines.append(
            f"| {arm} | {_pm(m['steps'], sd['steps'], 0)} | {_pm(m['heldout_dice'], sd['heldout_dice'])} | "
            f"{_pm(m['train_dice'], sd['train_dice'])} | {_pm(m['gap'], sd['gap'])} | {_pm(m['hd95'], sd['hd95'], 2)} | "
            f"{m['hd95_n_inf']:g} | {_pm(m['surface_dice'], sd['surface_dice'])} | "
            f"{_pm(m['surface_dice_2mm'], sd['surface_dice_2mm'])} | {_pm(m['far_false_positives'], None, 0)} |"
        )
    names = s["distance_bin_names"]
    share = next(iter(arms.values()))["per_seed"][0]["boundary_voxel_share"]
    lines += [
        "",
        "Dice by distance to the nearest tissue boundary (pooled over the tissues and the held-out subjects):",
        "",
        "| arm | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for arm, res in arms.items():
        std = res["std"]["boundary_dice"] or [None] * len(names)
        lines.append(f"| {arm} | " + " | ".join(_pm(m, sd) for m, sd in zip(res["mean"]["boundary_dice"], std)) + " |")
    lines.append("| share of tissue voxels | " + " | ".join(f"{100 * v:.0f} %" for v in share) + " |")
    labels = s["labels"]
    lines += [
        "",
        "Held-out Dice per tissue (seed mean):",
        "",
        "| arm | " + " | ".join(labels.values()) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for arm, res in arms.items():
        per = [np.mean([r["dice_per_label"][k] for r in res["per_seed"]]) for k in labels]
        lines.append(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in per) + " |")
    cases = list(next(iter(arms.values()))["per_seed"][0]["cases"])
    lines += [
        "",
        "Per held-out subject (mean over seeds): Dice / HD95 (finite, mm) / far false positives:",
        "",
        "| subject | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for cid in cases:
        cells = []
        for res in arms.values():
            runs = [r["cases"][cid] for r in res["per_seed"]]
            dice = np.mean([np.mean(list(c["dice"].values())) for c in runs])
            hd = [v for c in runs for v in c["hd95"].values() if v is not None]
            far = np.mean([c["far_false_positives"] for c in runs])
            cells.append(f"{dice:.3f} / {np.mean(hd) if hd else float('nan'):.1f} / {far:.0f}")
        lines.append(f"| {cid} | " + " | ".join(cells) + " |")
    lines += ["", "## What it shows", ""] + [f"* {f}" for f in findings(report)]
    lines += ["", "## Figures", ""] + [f"* [{k}]({v})" for k, v in report["figures"].items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
