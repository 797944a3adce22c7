"""The peers comparison's report: one markdown table (every pipeline's Dice per label on the held-out and on
the shifted scans, seconds per case, training reached) and the notes that say how it was measured."""

from __future__ import annotations

from typing import Any

from scripts.common import markdown_table
from scripts.experiments.generalisation.report import LABEL_NAMES

#: Row order and names; the mirroring each row's predictions use (8 flipped passes where "yes").
PIPELINES: dict[str, tuple[str, str]] = {
    "brainseg": ("brainseg", "no (its CPU config's default)"),
    "brainseg_tta": ("brainseg `--tta`", "yes, 8 passes"),
    "monai": ("MONAI reference", "no"),
    "nnunet_tta": ("nnU-Net v2 3d_fullres", "yes, 8 passes (its default)"),
    "nnunet": ("nnU-Net v2 3d_fullres `--disable_tta`", "no"),
}
SETS = {"demo_heldout": "held-out", "shifted": "shifted"}
SHORT = {"CSF": "CSF", "grey matter": "grey", "white matter": "white"}


def plan_summary(plans: dict, configuration: str) -> dict[str, Any]:
    """What nnU-Net planned for ``configuration``: network, patch, batch, spacing, normalisation."""
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]
    kwargs = arch.get("arch_kwargs", {})
    return {
        "network": arch["network_class_name"].rsplit(".", 1)[-1],
        "features_per_stage": list(kwargs.get("features_per_stage", [])),
        "n_stages": kwargs.get("n_stages"),
        "norm": str(kwargs.get("norm_op", "")).rsplit(".", 1)[-1],
        "patch_size": [int(v) for v in conf["patch_size"]],
        "batch_size": int(conf["batch_size"]),
        "spacing": [round(float(v), 4) for v in conf["spacing"]],
        "normalization": list(conf.get("normalization_schemes", [])),
        "transpose_forward": list(plans.get("transpose_forward", [])),
    }


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def training_cell(record: dict[str, Any] | None, pipeline: str) -> str:
    """``"812 steps, 1.0 min"`` (nnU-Net: iterations), ``-`` when unknown."""
    if not record or record.get("steps") is None:
        return "-"
    unit = "iterations" if pipeline.startswith("nnunet") else "steps"
    minutes = record.get("minutes")
    return f"{record['steps']} {unit}" + ("" if minutes is None else f", {minutes:.1f} min")


def rows(report: dict) -> list[list[str]]:
    out = []
    for key, (name, mirroring) in PIPELINES.items():
        results = report["results"].get(key)
        if not results:
            continue
        if key == "brainseg" and report["settings"].get("brainseg_mirror"):
            mirroring = "yes, 8 passes (its config)"
        cells = [name, mirroring, training_cell(report["training"].get(key), key)]
        for set_key in SETS:
            res = results.get(set_key)
            cells += [_f(res["dice"][n]) if res else "-" for n in LABEL_NAMES.values()]
            cells.append(f"**{_f(res['mean'])}**" if res else "-")
        per_case = report["seconds_per_case"].get(key, {})
        cpu = report.get("cpu_seconds_per_case", {}).get(key, {})
        cells += [_f(per_case.get(s), 1) + ("" if cpu.get(s) is None else f" / {cpu[s]:.0f}") for s in SETS]
        cells.append("yes" if all(r["geometry"]["ok"] for r in results.values()) else "**NO**")
        out.append(cells)
    return out


def header_cells(report: dict) -> list[str]:
    cases = report["settings"]["cases"]
    dice = []
    for s in SETS:
        dice += [f"{SETS[s]} ({cases[s]}) {SHORT[n]}" for n in LABEL_NAMES.values()] + [f"{SETS[s]} mean"]
    return [
        "pipeline",
        "mirroring",
        "training",
        *dice,
        *(f"s/case {SETS[s]} (wall / CPU)" for s in SETS),
        "masks on the scans' grids",
    ]


def best(report: dict) -> list[str]:
    """Which row has the best mean Dice on each set, and which predicts fastest: plain sentences."""
    lines = []
    for set_key, set_name in SETS.items():
        scored = {k: r[set_key]["mean"] for k, r in report["results"].items() if set_key in r}
        timed = {k: v[set_key] for k, v in report["seconds_per_case"].items() if set_key in v}
        if scored:
            top = max(scored, key=lambda k: scored[k])
            fast = min(timed, key=lambda k: timed[k]) if timed else None
            line = f"{set_name}: best mean Dice {PIPELINES[top][0]} ({scored[top]:.3f})"
            if fast is not None:
                line += f", fastest {PIPELINES[fast][0]} ({timed[fast]:.1f} s/case)"
            lines.append(line)
    return lines


def notes(report: dict) -> list[str]:
    tr = report["training"]
    minutes = report["settings"]["minutes"]
    out = []
    if tr.get("brainseg"):
        out.append(f"brainseg: {tr['brainseg'].get('note', '')}")
    if tr.get("monai"):
        m = tr["monai"]
        out.append(
            f"MONAI reference: BasicUNet {tuple(m['features'])}, {m['spacing_rule']}, patch "
            f"{m['patch_size'][0]}³ x {m['patches_per_step']}, {m['steps']} steps in {m['minutes']:.1f} min, "
            f"{m['threads']} threads"
        )
    if tr.get("nnunet"):
        n = tr["nnunet"]
        plan = n.get("plan", {})
        patch = "x".join(str(v) for v in plan.get("patch_size", n.get("patch_size", [])))
        spacing = "x".join(f"{v:.2f}" for v in plan.get("spacing", []))
        out.append(
            f"nnU-Net v2 {report.get('peers_env', {}).get('nnunetv2', '?')}: its default {n['configuration']} plan "
            f"({plan.get('network', '?')} {tuple(plan.get('features_per_stage', []))}, patch {patch} x "
            f"{n['batch_size']}, {spacing} mm), fold {n['fold']} (every training case), trainer {n['trainer']}: "
            f"{n['iterations']} iterations ({n['epochs']} epochs of <= {n['iterations_per_epoch']}) in "
            f"{n['seconds'] / 60:.1f} min of the {n['budget_seconds'] / 60:g}-min budget, last lr {n['final_lr']:.2e}, "
            f"{n['threads']} torch threads, {n['n_proc_DA']} augmentation worker(s)"
        )
    w = report.get("workers", {})
    parts = [
        "Training: " + "; ".join(out) + f". Every pipeline trained for {minutes:g} min of its own training clock "
        "(data loading and caching before it excluded).",
    ]
    if w:
        parts.append(
            f"nnU-Net's processes held to the machine's {w['cores']} cores: nnUNet_n_proc_DA={w['nnUNet_n_proc_DA']}, "
            f"nnUNet_def_n_proc={w['nnUNet_def_n_proc']}, torch threads {w['torch_threads']}, predicting with "
            f"-npp {w['predict_npp']} -nps {w['predict_nps']}, -device cpu."
        )
    parts.append(
        "Seconds per case: each predict command's whole wall time (process start, imports, model load, all its "
        "cases) over its cases, one command per pipeline and scan set, then the CPU seconds (user + system) of the "
        "command and its worker processes over its cases: on a shared machine the wall time includes waiting "
        "for the cores, the CPU time does not."
    )
    if report["settings"].get("nnunet_tta") is False:
        parts.append(
            "nnU-Net's mirrored predictions (its default, 8 passes) were not run in this run (`--nnunet-tta` runs "
            "them): on a CPU they take minutes per scan."
        )
    lines = best(report)
    if lines:
        parts.append("This run: " + "; ".join(lines) + ".")
    return parts


def tables(report: dict) -> str:
    """The one table and its notes, as markdown."""
    return "\n\n".join([markdown_table(rows(report), header_cells(report)), *notes(report)])


def header(report: dict) -> str:
    """The run's line: command, seconds, machine, versions, load and commit."""
    m, g, env = report["machine"], report["git"], report.get("peers_env", {})
    return (
        f"`{report['command']}` ({report['total_seconds']:.0f} s; {m['cpu']}, {m['cores_usable']} cores, "
        f"{m['memory_gb']} GB; brainseg and MONAI {m['monai']} on torch {m['torch']}, nnU-Net v2 "
        f"{env.get('nnunetv2', '?')} on torch {env.get('torch', '?')} (Python {env.get('python', '?')}, its own "
        f"environment); 1-min load {report['load_1min']['start']} at the start, {report['load_1min']['end']} at the "
        f"end; commit {(g['commit'] or '?')[:10]}{' + uncommitted changes' if g['dirty_files'] else ''})"
    )
