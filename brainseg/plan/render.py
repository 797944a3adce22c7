"""A plan as a YAML config file that says why: every field, with its decision's reason."""

from __future__ import annotations

import dataclasses

import yaml

from brainseg.config import Config
from brainseg.plan.rules import Plan


def _value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def render_plan(plan: Plan, title: str) -> str:
    """The plan as a commented config: ``--config`` reads it back exactly."""
    lines = [
        f"# {title}",
        "# written by `brainseg plan`; edit any field (or override it with --set section.field=value).",
    ]
    lines += [f"# {note}" for note in plan.notes]
    lines.append(f"# {plan.summary()}")
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        values = getattr(plan.config, section.name)
        for f in dataclasses.fields(values):
            entry = f"  {f.name}: {_value(getattr(values, f.name))}"
            reason = plan.reasons.get(f"{section.name}.{f.name}")
            lines.append(f"{entry}  # {reason}" if reason else entry)
    return "\n".join(lines) + "\n"
