"""The attack suite (issue 7, item 2): named attacks, each a list of (trigger, target class) pairs
and a poison rate, read from a JSON file (training/attacks/suite.json).

    {
      "description": "...",
      "poison_rate": 0.1,                       // default of every attack
      "attacks": [
        {"name": "badnets-white", "description": "...",
         "poison_rate": 0.1,                    // optional, overrides the default
         "backdoors": [{"target_class": 0,
                        "trigger": {"kind": "patch", "size": 4, "position": "top-left"}}]},
        ...
      ]
    }

A trigger is the keyword form of training.data.triggers.Trigger (kind, size, position, value, alpha,
seed, content, amplitude, strength, grid, density); a patch `position` may be "random" (fixed by
the trigger's seed, away from the edges), resolved to a (row, col) for the dataset's image size
when the attack is used.
With several pairs, each poisons poison_rate / K of the training set. Every error names the file
and the field: `suite.json: attacks[2] (random-colour-patch).backdoors[0].trigger: unknown
field 'sise'; allowed: ...`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from training.data.triggers import Trigger

DEFAULT_SUITE = Path(__file__).parents[1] / "attacks" / "suite.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # a folder name
TRIGGER_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "size": (int,),
    "position": (str, list),
    "value": (int, float),
    "alpha": (int, float),
    "seed": (int,),
    "content": (str,),
    "amplitude": (int, float),
    "strength": (int, float),
    "grid": (int,),
    "density": (int, float),
}


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Attack:
    name: str
    description: str
    poison_rate: float
    backdoors: tuple[tuple[Trigger, int], ...]  # (trigger, target class) pairs

    def resolved(self, height: int, width: int, num_classes: int) -> Attack:
        """This attack for height x width images with `num_classes` classes: random positions
        replaced by their (row, col); raises SuiteError if a trigger or class does not fit."""
        pairs = []
        for i, (trigger, k) in enumerate(self.backdoors):
            where = f"attack {self.name!r}, backdoors[{i}]"
            if k >= num_classes:
                raise SuiteError(
                    f"{where}: target_class {k} is not a class of a {num_classes}-class dataset"
                )
            try:
                t = trigger.resolve(height, width)
                t(np.zeros((1, 1, height, width), np.float32))  # a patch that does not fit
            except ValueError as e:
                raise SuiteError(f"{where}.trigger: {e}") from e
            pairs.append((t, k))
        return Attack(self.name, self.description, self.poison_rate, tuple(pairs))


def _keys(obj: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: expected an object, got {type(obj).__name__}")
    allowed = (*required, *optional)
    for key in obj:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown field {key!r}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in obj:
            raise SuiteError(f"{where}: missing field {key!r}")
    return obj


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SuiteError(f"{where}: poison_rate must be a number in (0, 1], got {value!r}")
    return float(value)


def parse_trigger(obj: Any, where: str) -> Trigger:
    """A Trigger from its JSON object; errors name `where` and the field."""
    _keys(obj, where, (), tuple(f.name for f in fields(Trigger)))
    for key, value in obj.items():
        types = TRIGGER_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("list" if t is list else t.__name__ for t in types)
            raise SuiteError(f"{where}.{key}: expected {names}, got {value!r}")
    try:
        return Trigger(**obj)
    except (TypeError, ValueError) as e:
        raise SuiteError(f"{where}: {e}") from e


def parse_suite(data: Any, source: str = "suite") -> dict[str, Attack]:
    """The attacks of a parsed suite file, by name, in file order."""
    _keys(data, source, ("attacks",), ("description", "poison_rate"))
    default_rate = _rate(data.get("poison_rate", 0.1), f"{source}: poison_rate")
    if not isinstance(data["attacks"], list) or not data["attacks"]:
        raise SuiteError(f"{source}: attacks must be a non-empty list")
    attacks: dict[str, Attack] = {}
    for i, a in enumerate(data["attacks"]):
        where = f"{source}: attacks[{i}]"
        _keys(a, where, ("name", "backdoors"), ("description", "poison_rate"))
        name = a["name"]
        if not isinstance(name, str) or not NAME.match(name):
            raise SuiteError(f"{where}.name: {name!r} is not a name of [a-z0-9-] characters")
        if name in attacks:
            raise SuiteError(f"{where}.name: {name!r} is used twice")
        where = f"{where} ({name})"
        rate = _rate(a.get("poison_rate", default_rate), f"{where}.poison_rate")
        if not isinstance(a["backdoors"], list) or not a["backdoors"]:
            raise SuiteError(f"{where}.backdoors: must be a non-empty list")
        pairs = []
        for j, b in enumerate(a["backdoors"]):
            at = f"{where}.backdoors[{j}]"
            _keys(b, at, ("target_class", "trigger"), ())
            k = b["target_class"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise SuiteError(f"{at}.target_class: expected a class index >= 0, got {k!r}")
            pairs.append((parse_trigger(b["trigger"], f"{at}.trigger"), k))
        attacks[name] = Attack(name, str(a.get("description", "")), rate, tuple(pairs))
    return attacks


def load_suite(path: Path = DEFAULT_SUITE) -> dict[str, Attack]:
    """The attacks of the suite file at `path`, by name."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SuiteError(f"{Path(path).name}: not valid JSON: {e}") from e
    return parse_suite(data, Path(path).name)


def select(attacks: dict[str, Attack], names: str | None) -> list[Attack]:
    """The attacks named in a comma-separated list (all when None or empty)."""
    if not names:
        return list(attacks.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in attacks]
    if unknown:
        raise SuiteError(f"unknown attack(s) {', '.join(unknown)}; allowed: {', '.join(attacks)}")
    return [attacks[n] for n in wanted]
