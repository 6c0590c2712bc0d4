"""Command-line options declared once, on the config dataclasses: the parser is derived from them.

A config field carries its help (and, when needed, its flag, choices or the commands it belongs
to) in ``dataclasses.field(metadata=opt(...))``; ``add_options`` turns every such field into an
argparse option of the same name (``--batch-size`` for ``batch_size``) with the field's type and
default, and ``from_args`` builds the config back from the parsed arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def opt(help: str, *, flag: str | tuple[str, ...] | None = None, positional: bool = False, choices: tuple | None = None,
        commands: tuple[str, ...] | None = None, metavar: str | None = None, hidden: bool = False) -> dict:
    """Metadata for a config field shown on the command line.

    Args:
        flag: the option's spelling(s) when it is not ``--field-name`` (e.g. ``--no-download`` for a
            ``True`` boolean, which then stores False; ``("--input", "-in")`` for an alias).
        positional: a positional argument instead of an option.
        commands: the subcommands that offer it (default: every command using the config).
        hidden: accepted but left out of --help (test hooks such as a download URL).
    """
    return {"cli": True, "help": help, "flag": flag, "positional": positional, "choices": choices,
            "commands": commands, "metavar": metavar, "hidden": hidden}


def _base(t) -> tuple[type, bool]:
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0], True
    return t, False


def cli_fields(cls, command: str) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli")
              and (f.metadata["commands"] is None or command in f.metadata["commands"])]
    return sorted(fields, key=lambda f: f.kw_only is True)  # shared keyword-only options (storage) last


class Once(argparse.Action):
    """A single-valued option given twice is refused (argparse would keep the last one silently:
    `--min-score 0.5 ... --min-score 0.9` is a typo or a pasted line, not a wish)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            parser.error(f"argument {option_string}: given more than once (it takes one value)")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def add_options(parser: argparse.ArgumentParser, cls, command: str, defaults: dict | None = None) -> None:
    """Add one argparse argument per CLI field of dataclass ``cls`` offered by ``command``."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls, command):
        m = f.metadata
        typ, _ = _base(hints[f.name])
        default = (defaults or {}).get(f.name, f.default)
        if m["positional"]:
            parser.add_argument(f.name, help=m["help"].replace("%", "%%"), metavar=m["metavar"], choices=m["choices"])
            continue
        flags = m["flag"] or "--" + f.name.replace("_", "-")
        flags = (flags,) if isinstance(flags, str) else tuple(flags)
        required = default is dataclasses.MISSING
        nargs, action = None, Once
        if typing.get_origin(typ) is tuple:  # tuple[str, ...]: one or more values, and a repeated flag adds more
            typ, nargs, action = typing.get_args(typ)[0], "+", "extend"
        if typ is bool:
            parser.add_argument(*flags, dest=f.name, action="store_false" if default else "store_true",
                                help=m["help"].replace("%", "%%"))
            continue
        shown = "" if required or default is None else f" (default: {default})"
        metavar = m["metavar"] or (None if m["choices"] else flags[0].lstrip("-").upper().replace("-", "_"))
        parser.add_argument(*flags, dest=f.name, type=typ, required=required, choices=m["choices"], metavar=metavar,
                            nargs=nargs, default=None if required else default, action=action,
                            # argparse %-formats help strings ("50% of memory" would crash --help)
                            help=argparse.SUPPRESS if m["hidden"] else (m["help"] + shown).replace("%", "%%"))


def from_args(cls, args: argparse.Namespace, command: str, **fixed):
    """The config ``cls`` from parsed arguments (fields not on this command keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(cls, command)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, **fixed)


def carried(src, cls, **given):
    """``cls`` built from ``given`` plus every dataclass field of ``src`` that ``cls`` also has.

    The shared fields come from the option groups both configs compose (``WeightsOptions``,
    ``BatchOptions``...): a field added to a group reaches every config built this way, with no
    line copying it by hand.
    """
    names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(src)}
    return cls(**{n: getattr(src, n) for n in names - given.keys()}, **given)
