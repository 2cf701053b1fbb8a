"""Setting config fields by dotted path: how flags, ``--set`` and config files
reach any field of an `ExperimentConfig`.

    config = overrides.override(config, {"m2.optimization.learning_rate": "3e-4"})

Values given as strings (the command line) are parsed for the field's type;
others (a JSON config file) are checked against it.
"""

import dataclasses
import typing
from typing import Any, Mapping

from ssl_dgm import configs


def parse_value(hint, text, path):
    """A command-line string as a value of type `hint` (``none`` for None)."""
    inner = configs.optional_type(hint)
    if inner is not None:
        return None if text.strip().lower() in ("none", "null") else parse_value(inner, text,
                                                                                path)
    try:
        if typing.get_origin(hint) is tuple:
            return tuple(int(v) for v in text.strip("[]() ").split(",") if v.strip())
        if hint is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if hint in (int, float):
            return hint(text)
    except ValueError:
        kind = "a list of integers" if typing.get_origin(hint) is tuple else hint.__name__
        raise configs.ConfigError(path, f"expects {kind}, got {text!r}") from None
    if hint is str:
        return text
    raise configs.ConfigError(path, "is a section, not a field: set one of its fields")


def field_type(path):
    """The type hint of the field at dotted `path` of `configs.ExperimentConfig`."""
    cls, hint = configs.ExperimentConfig, None
    parts = path.split(".")
    for depth, name in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise configs.ConfigError(".".join(parts[:depth]), "is a field, not a section")
        hints = typing.get_type_hints(cls)
        if name not in hints:
            raise configs.ConfigError(".".join(parts[:depth + 1]),
                              f"is not a field (fields here: {', '.join(hints)})")
        hint = hints[name]
        cls = configs.optional_type(hint) or hint
    return hint


def override(config, updates: Mapping[str, Any]):
    """`config` with each field of `updates` (``{dotted path: value}``) set.

    A string value is parsed for its field's type (`parse_value`); other values
    are checked against it.  All updates apply at once, so fields that are only
    valid together (a ``cosine_time`` schedule and its budget) can be set
    together.  Setting a field of an absent stage is refused.
    """
    fields = configs.to_dict(config)
    for path, value in updates.items():
        hint = field_type(path)
        if isinstance(value, str) and hint is not str:
            value = parse_value(hint, value, path)
        *parents, name = path.split(".")
        section = fields
        for depth, parent in enumerate(parents):
            if section[parent] is None:
                raise configs.ConfigError(".".join(parents[:depth + 1]),
                                  f"is absent in a {config.model} config, so {path} "
                                  f"cannot be set")
            section = section[parent]
        section[name] = configs.to_dict(value) if dataclasses.is_dataclass(value) else value
    return configs.build(configs.ExperimentConfig, fields)


def leaf_paths(fields: Mapping[str, Any], prefix=""):
    """A nested mapping (a config file) as ``{dotted path: value}`` of its leaves."""
    if not isinstance(fields, Mapping):
        raise configs.ConfigError(prefix.rstrip(".") or "the config",
                                  f"must be a mapping of fields, got {fields!r}")
    leaves = {}
    for name, value in fields.items():
        hint = field_type(prefix + name)
        section = configs.optional_type(hint) or hint
        if dataclasses.is_dataclass(section) and isinstance(value, Mapping):
            leaves.update(leaf_paths(value, f"{prefix}{name}."))
        else:
            leaves[prefix + name] = value
    return leaves


def parse_set(item):
    """``(path, value)`` of a ``--set section.field=value`` item, both stripped.

    Raises:
      ValueError: the item lacks ``=``, or sets ``data.labels``, which the command's
        ``--labels`` sets (it also picks the preset's label-count-dependent values).
    """
    path, equals, value = item.partition("=")
    if not equals:
        raise ValueError(f"--set {item!r} needs the form section.field=value")
    if path.strip() == "data.labels":
        raise ValueError("--set data.labels: use --labels, which also picks the preset's "
                         "label-count-dependent values")
    return path.strip(), value.strip()
