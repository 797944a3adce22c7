"""The benchmark's report: the targets as measured, and the tables printed after a run
(or from a saved ``--json`` file with ``--report``)."""

from __future__ import annotations

from scripts.common import markdown_table


def _f(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}"


def targets(res: dict) -> dict[str, bool | None]:
    """The issue's targets, each as measured in ``res`` (``None``: not measurable in this run)."""
    crit: dict[str, bool | None] = {}
    inf, ld, tr = res.get("inference"), res.get("loader"), res.get("training")
    if inf:
        crit.update({f"inference_{k}": v for k, v in (inf.get("criteria") or {}).items()})
    for p in (k for k in (ld or {}) if k.isdigit()):
        crit[f"loader_{p}_ratio_at_least_2"] = ld[p]["ratio_vs_monai"] >= 2.0
    if tr:
        crit["data_wait_at_most_5pct"] = tr["data_wait_fraction"] <= 0.05
    return crit


def headline(res: dict) -> dict:
    """The run's main figures in one place (``summary`` in the JSON; absent sections leave theirs out)."""
    out: dict = {"network": res.get("network")}
    inf = res.get("inference")
    if inf:
        out.update(
            ratio_vs_monai=inf["ratio_vs_monai"],
            mirroring=inf["mirroring"],
            fast_ratio_vs_monai=inf["fast_ratio_vs_monai"],
            fast_dice_diff_vs_default=inf["fast_dice_diff_vs_default"],
            floor_ratio=inf["floor_ratio"],
            peak_rss_mb={
                "brainseg": inf["brainseg"]["maxrss_mb"],
                "brainseg_fast": inf["brainseg_fast"]["maxrss_mb"],
                "monai": inf["monai"]["maxrss_mb"],
            },
        )
    if res.get("loader"):
        out["loader_ratio_vs_monai"] = res["loader"]["ratio_vs_monai"]
    if res.get("ensemble"):
        out["ensemble_ratio_vs_k_singles"] = res["ensemble"]["ratio_vs_k_singles"]
    return out


def report_tables(res: dict) -> str:
    parts = []
    m = res["machine"]
    net = res.get("network") or {}
    net_text = (
        (
            f"; network: U-Net {net.get('levels')} levels, {net.get('base_features')}-{net.get('max_features')} "
            f"features, {net.get('norm')} norm, patch {net.get('patch_size')} ({net.get('source')}"
            f"{', the shipped network' if net.get('shipped') else ''})"
        )
        if net
        else ""
    )
    parts.append(
        f"Machine: {m['cpu']}, {m['cores_usable']} cores, {m['memory_gb']} GB; torch {m['torch']}, "
        f"MONAI {m['monai']}; mode {'quick' if res['quick'] else 'full'}{net_text}; 1-min load at start "
        f"{res['load_1min_start']}, at the end {res.get('load_1min_end', '?')} (our own runs included)."
    )
    rows = []
    inf = res.get("inference")
    if inf:
        b, mo, fa, mi = inf["brainseg"], inf["monai"], inf["brainseg_fast"], inf["mirroring"]
        win, floor = inf["windows"], inf["floor_ratio"]
        rows.append(
            [
                f"inference, file to written mask (MVox/s, {len(inf['cases'])} cases; mirroring: brainseg "
                f"{'on' if mi['brainseg'] else 'off'}, MONAI {'on' if mi['monai'] else 'off'})",
                _f(b["mvox_per_s"]),
                _f(mo["mvox_per_s"]),
                f"**{inf['ratio_vs_monai']:.2f}x** ({win['default']} windows)",
            ]
        )
        rows.append(
            [
                f"  same, brainseg predict --fast ({', '.join(fa['overrides'])})",
                _f(fa["mvox_per_s"]),
                "",
                f"**{inf['fast_ratio_vs_monai']:.2f}x** ({win['fast']} windows); Dice - default mode: "
                + " / ".join(f"{v:+.4f}" for v in inf["fast_dice_diff_vs_default"].values()),
            ]
        )
        rows.append(
            [
                "  floor: end to end / one no-overlap pass of the network over the same region",
                f"{floor['default']:.2f} (fast {floor['fast']:.2f})",
                "",
                f"the pass: {b['floor_seconds']:.2f} s, {win['floor']} windows",
            ]
        )
        comp = inf.get("brainseg_compiled")
        if comp and "mvox_per_s" in comp:
            rows.append(
                [
                    "  same, brainseg windows through torch.compile (opt-in)",
                    _f(comp["mvox_per_s"]),
                    "",
                    f"{comp['mvox_per_s'] / mo['mvox_per_s']:.2f}x (compile + warm-up {comp['warmup_seconds']:.0f} s)",
                ]
            )
        variants = (
            (
                "brainseg_fp32",
                f"in float32 (infer.amp=none; the default ran in {b.get('precision', '?')})",
                "default - float32",
            ),
            ("brainseg_margin_0", "with infer.margin=0 (fewest windows)", "diff"),
            ("brainseg_no_crop", "without the crop box, margin 0 (windows over the whole volume, like MONAI)", "diff"),
        )
        for key, what, diff in variants:
            v = inf.get(key)
            if v:
                rows.append(
                    [
                        f"  same, brainseg {what}",
                        _f(v["mvox_per_s"]),
                        "",
                        f"{v['ratio_vs_monai']:.2f}x; voxels equal {v['agreement'] * 100:.2f}%; Dice {diff} "
                        + " / ".join(f"{d:+.4f}" for d in v["dice_diff"].values()),
                    ]
                )
        rows.append(
            [
                "inference peak RSS (MB, whole process)",
                f"{b['maxrss_mb']:.0f}",
                f"{mo['maxrss_mb']:.0f}",
                f"--fast {fa['maxrss_mb']:.0f}",
            ]
        )
        rows.append(
            [
                "masks: voxels equal (all / foreground of either)",
                f"{inf['agreement'] * 100:.2f}% / {inf['agreement_foreground'] * 100:.2f}%",
                "",
                f"min case {inf['agreement_min'] * 100:.2f}%",
            ]
        )
        db, dm = inf["dice_vs_reference_brainseg"], inf["dice_vs_reference_monai"]
        rows.append(
            [
                "Dice vs reference labels (" + ", ".join(f"label {k}" for k in db) + ")",
                " / ".join(_f(db[k], 3) for k in db),
                " / ".join(_f(dm[k], 3) for k in dm),
                "brainseg - MONAI: " + " / ".join(f"{inf['dice_diff'][k]:+.4f}" for k in db),
            ]
        )
        pl = inf.get("reference_placement")
        if pl:
            fr = ", ".join(str(s) for s in pl["shifts"])
            rows.append(
                [
                    f"MONAI with its windows moved (shifts {fr} voxels): Dice range per label",
                    "",
                    " / ".join(f"{a:.3f}-{b:.3f}" for a, b in pl["dice_range"].values()),
                    f"spread up to {pl['dice_spread_max']:.4f}; voxels equal to default MONAI "
                    f"{pl['agreement_with_default_min'] * 100:.2f}% (min); brainseg outside the range by "
                    f"{pl['brainseg_outside_range_max']:.4f} at most",
                ]
            )
    ld = res.get("loader")
    if ld:
        for p in (k for k in ld if k.isdigit()):
            e = ld[p]
            key = "patches_per_s_at_config_mix" if e["ratio_basis"] == "config mix" else "patches_per_s"
            rows.append(
                [
                    f"training patches/s, {p}³, augmented (0 workers, 1 thread)",
                    _f(e["brainseg"][key], 1),
                    _f(e["monai"][key], 1),
                    f"**{e['ratio_vs_monai']:.2f}x** ({e['ratio_basis']}; raw {e['ratio_vs_monai_raw']:.2f}x, "
                    f"rotated/scaled {e['brainseg']['spatially_augmented']:.0%} / {e['monai']['spatially_augmented']:.0%})",
                ]
            )
    tr = res.get("training")
    if tr:
        extra = " ".join(f"--set {o}" for o in tr.get("overrides", []))
        rows.append(
            [
                f"data wait, configs/demo.yaml {extra + ' ' if extra else ''}training (share of epoch time)",
                f"{tr['data_wait_fraction'] * 100:.1f}% (first epoch {tr['data_wait_fraction_first_epoch'] * 100:.1f}%)",
                "",
                f"{tr['steps']} steps, {tr['seconds_per_step']:.2f} s/step",
            ]
        )
    ens = res.get("ensemble")
    if ens:
        rows.append(
            [
                f"{ens['members']}-model ensemble, end to end (s, {ens['cases']} cases)",
                f"{ens['ensemble_seconds']:.2f}",
                "",
                f"{ens['ratio_vs_k_singles']:.2f}x the {ens['members']} single predictions "
                f"({sum(ens['single_seconds']):.2f} s), {ens['ratio_vs_one_single']:.2f}x one",
            ]
        )
    parts.append(markdown_table(rows, ["measurement", "brainseg", "MONAI reference", "ratio / note"]))
    crit = targets(res)
    if crit:
        parts.append(
            "Targets: "
            + "; ".join(f"{k} {'yes' if v else ('n/a' if v is None else 'NO')}" for k, v in crit.items())
            + "."
        )
    sc = res.get("scaling")
    if sc:
        srows = [
            [
                f"{r['size']}³",
                _f(r["mvox"], 1),
                r["windows"],
                _f(r["seconds"]),
                _f(r["seconds"] / r["mvox"], 3),
                _f(r["seconds"] / r["windows"] * 1000, 0),
                f"{r['delta_rss_mb']:.0f}",
                _f(r["delta_rss_mb"] / r["mvox"], 1),
                f"{r['class_maps_mb']:.0f}" if "class_maps_mb" in r else "",
            ]
            for r in sc["rows"]
        ]
        head = ["volume", "MVox", "windows", "seconds", "s/MVox", "ms/window", "peak extra RSS MB", "MB/MVox"]
        parts.append(markdown_table(srows, [*head, "class maps MB"]))
        t, mem = sc["time"], sc["memory"]
        parts.append(
            "Linearity, largest/smallest: s/MVox "
            f"{t['ratio_max_min_per_mvox']:.2f}, s/window {sc['time_per_window']['ratio_max_min_per_mvox']:.2f}, "
            f"MB/MVox {mem['ratio_max_min_per_mvox']:.2f}. Straight-line fits: time = "
            f"{t['fit_slope_per_mvox']:.3f} s/MVox x size {t['fit_intercept']:+.2f} s (R² {t.get('fit_r2', float('nan')):.3f}), "
            f"memory = {mem['fit_slope_per_mvox']:.1f} MB/MVox x size {mem['fit_intercept']:+.0f} MB "
            f"(R² {mem.get('fit_r2', float('nan')):.3f})."
        )
    gpu = res.get("gpu", {})
    if not gpu.get("available"):
        parts.append(f"GPU: {gpu.get('note', 'not run')}.")
    else:
        grows = [[k, _f(v["mvox_per_s"])] for k, v in gpu.items() if isinstance(v, dict) and "mvox_per_s" in v]
        parts.append(markdown_table(grows, ["GPU variant", "MVox/s"]))
    return "\n\n".join(parts)
