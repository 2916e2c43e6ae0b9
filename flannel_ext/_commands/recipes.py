"""`flannel-ext recipes`: the shipped and installed recipes, with a one-line description each.

Python recipes come from the `flannel_ext.recipes` entry-point group (so a third-party
package's recipes appear too); shell recipes are the ``*.json`` net-conf files shipped in
the `flannel_ext.recipes` package, used with ``run --net-conf <path>``.
"""
from __future__ import annotations

import json
from importlib import resources

from flannel_ext._hooks.loader import installed_recipes, load_hook_class


def register(subparsers):
    parser = subparsers.add_parser(
        "recipes", help="list the shipped and installed recipes",
        description="List the shipped and installed recipes. Python recipes are selected with "
                    '"Backend": {"Type": "extension", "Hook": "<name>"}; shell recipes are '
                    "net-conf files for `run --net-conf <path>`.")
    parser.add_argument("--json", action="store_true", help="print one JSON object per recipe")
    parser.set_defaults(func=run)


def list_recipes() -> list[dict]:
    """[{name, form, use, description}] for every Python and shell recipe."""
    rows = []
    for name, target in sorted(installed_recipes().items()):
        try:
            description = load_hook_class(name).description or "(no description)"
        except Exception as exc:  # noqa: BLE001 - a broken third-party recipe is listed, not fatal
            description = f"(cannot load: {exc})"
        rows.append({"name": name, "form": "python", "use": f'"Hook": "{name}"  ({target})',
                     "description": description})
    for entry in sorted(resources.files("flannel_ext.recipes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            try:
                description = json.loads(entry.read_text()).get("Description", "")
            except ValueError as exc:
                description = f"(invalid JSON: {exc})"
            rows.append({"name": entry.name[:-5], "form": "shell", "use": f"--net-conf {entry}",
                         "description": description or "(no description)"})
    return rows


def run(args) -> int:
    rows = list_recipes()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    for row in rows:
        print(f"{row['name']:<{width}}  {row['form']:<6}  {row['description']}")
        print(f"{'':<{width}}  {'':<6}  use: {row['use']}")
    return 0
