"""The `sidecar` command: `sidecar serve`, `sidecar ctl ...`, `sidecar probe`.

Every field of `Settings` is a flag of `serve` and a `SIDECAR_*` variable.
Exit codes: 0 clean stop; 1 runtime failure (e.g. the port is in use);
2 bad usage or configuration (unknown flag, a `SIDECAR_*` value that does not
parse, an address that is not HOST:PORT, missing repository), as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar import __version__, ctl, probe
from sidecar.settings import Settings, env_name, flag_name, parse_bool, setting_fields


def _type_of(f: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    return {"Path": Path, "str": str, "int": int, "float": float, "bool": parse_bool}[kind]


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for f in setting_fields():
        convert = _type_of(f)
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default: {f.default}]"
        if convert is parse_bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), type=convert, default=None,
                                choices=f.metadata["choices"], help=help_text,
                                metavar=f.name.split("_")[-1].upper())


class SettingError(ValueError):
    """A `SIDECAR_*` variable whose value cannot be used (one line, exit code 2)."""


_EXPECTED = {int: "expected an integer", float: "expected a number",
             parse_bool: "expected true or false"}


def _from_environment(f: Any, raw: str) -> Any:
    convert = _type_of(f)
    try:
        value = convert(raw)
    except ValueError:
        raise SettingError(f"{env_name(f.name)}={raw!r}: {_EXPECTED[convert]}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise SettingError(f"{env_name(f.name)}={raw!r}: choose from {', '.join(choices)}")
    return value


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags over `SIDECAR_*` variables over defaults; SettingError for a variable
    that does not parse."""
    values: dict[str, Any] = {}
    for f in setting_fields():
        value = getattr(args, f.name)
        if value is None and env_name(f.name) in os.environ:
            value = _from_environment(f, os.environ[env_name(f.name)])
        if value is not None:
            values[f.name] = value
    return Settings(**values)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `sidecar` parser and its `serve` sub-parser."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="A gRPC model-serving sidecar: ONNX model versions over the Open"
        " Inference Protocol, the previous version kept warm, atomic swaps.",
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        usage="%(prog)s [options]  (every option: sidecar serve --help)",
        help="serve a model repository",
        description="Serve every model of a repository over gRPC (Open Inference"
        " Protocol, health, reflection). Each flag can be set by the SIDECAR_*"
        " variable named in its help.",
    )
    _add_setting_flags(serve)
    ctl.add_parser(sub)
    probe.add_parser(sub)
    return parser, serve


def _fail(message: str, code: int) -> int:
    print(f"sidecar: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = settings_from(args)
        except SettingError as exc:
            return _fail(str(exc), 2)
        return _serve(settings)
    if args.command == "ctl":
        return ctl.main(args)
    if args.command == "probe":
        return probe.main(args)
    return _fail(f"unknown command {args.command}", 2)


def _serve(settings: Settings) -> int:
    from sidecar import app, logs  # imported late: `--help` stays fast
    from sidecar.rpc.server import BindError

    logs.configure(settings.log_format, settings.log_level)
    try:
        asyncio.run(app.serve(settings))
    except app.ConfigError as exc:
        return _fail(str(exc), 2)
    except BindError as exc:
        return _fail(str(exc), 1)
    return 0
