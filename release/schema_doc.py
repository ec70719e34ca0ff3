"""The manifest's JSON Schema and a Markdown field reference generated from it, and the JSON
Schema of ``hlsp plan --against --format json`` (release/plan_diff.py).

``hlsp schema --outdir docs`` writes them; ``tests/release/test_cli.py`` (test_generated_docs_are_current) fails when
the files in docs/ are not what the code generates.
"""

from __future__ import annotations

import json
from typing import Any

from release.manifest import manifest_json_schema

SCHEMA_FILE = "manifest.schema.json"
REFERENCE_FILE = "manifest-reference.md"
PLAN_DIFF_SCHEMA_FILE = "plan-diff.schema.json"

# Where each model sits in a manifest, for the headings of the reference.
_PLACES = {
    "Manifest": "(top level)",
    "Release": "[release]",
    "Contact": "[release.contact]",
    "Pins": "[pins]",
    "Program": "[program]",
    "DataSource": "[program.data]",
    "Target": "[targets.<name>]",
    "Observations": "[targets.<name>.observations]",
    "MiriBackground": "[targets.<name>.miri_background]",
    "Anchoring": "[targets.<name>.anchoring]",
    "ExternalImage": "[[targets.<name>.anchoring.nircam]] / [[...miri]]",
    "ParameterLayers": "[parameters] and [targets.<name>.parameters]",
    "Products": "[products]",
    "Comparisons": "[comparisons]",
    "ComparisonThresholds": "[comparisons.thresholds]",
    "ComparisonOverride": "[comparisons.overrides.<band, target or target/BAND>]",
    "Patch": "[patch]",
}


def schema_text() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


def plan_diff_schema_text() -> str:
    from release.plan_diff import PlanDiff

    schema = PlanDiff.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hlsp plan --against --format json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].split("/")[-1]
    if "const" in prop:
        return repr(prop["const"])
    if "enum" in prop:
        return " \\| ".join(repr(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if t == "object":
        extra = prop.get("additionalProperties")
        return f"table of {_type_of(extra)}" if isinstance(extra, dict) else "table"
    return t


def reference_text() -> str:
    schema = manifest_json_schema()
    models = {"Manifest": schema, **schema.get("$defs", {})}
    lines = [
        "# Manifest field reference",
        "",
        "Generated from the pydantic models in `release/manifest.py` by `make schema`; do not edit.",
        "See [manifest.md](manifest.md) for the guide and a worked example.",
        "",
    ]
    for name in _PLACES:
        model = models.get(name)
        if model is None:
            continue
        lines += [f"## {_PLACES[name]}", ""]
        if model.get("description"):
            lines += [model["description"].strip(), ""]
        lines += ["| key | type | required / default | meaning |", "| --- | --- | --- | --- |"]
        required = set(model.get("required", []))
        for key, prop in model.get("properties", {}).items():
            default = (
                "required"
                if key in required
                else (f"`{json.dumps(prop['default'])}`" if "default" in prop else "optional")
            )
            desc = (prop.get("description") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{key}` | {_type_of(prop)} | {default} | {desc} |")
        lines.append("")
    return "\n".join(lines + _stage_reference())


def _stage_reference() -> list[str]:
    """The stages a manifest may set parameters of, from their declarations."""
    from processing.registry import default_registry

    reg = default_registry()
    lines = [
        "## Stages (`[<scope>.<stage>]` parameter tables)",
        "",
        "Generated from the stage declarations (`processing/registry.py`), in their order of "
        "dependency. Defaults are this system's, per instrument, over the stage's own.",
        "",
    ]
    for stage in reg.ordered():
        ins = ", ".join(
            f"`{i.name}` ({i.relation}" + (f" of {i.stage} `*{i.suffix}`" if i.stage else "") + ")"
            for i in stage.inputs
        )
        prods = ", ".join(f"`{p.type}`" for p in stage.products) or "none"
        lines += [
            f"### `{stage.name}`: {stage.description}",
            "",
            f"- unit: {stage.unit}; instruments: {', '.join(stage.instruments)}",
            f"- inputs: {ins}; outputs: {', '.join(f'`*{o}`' for o in stage.outputs)}; release products: {prods}",
            f"- {stage.parameters.describe()}",
        ]
        for inst in stage.instruments:
            d = stage.parameters.default_values(inst)
            if d:
                lines.append(f"- defaults for {inst}: `{json.dumps(d, sort_keys=True)}`")
        lines.append("")
    return lines
