"""
nanoGPT's configurator, made strict. Scripts keep their settings in a dataclass and call

    cfg = configure(TrainConfig(), sys.argv[1:])

Each argument is applied in order:
    config/some_file.py    a Python file whose top-level assignments override fields
    --key=value            one override; split on the first '=', value parsed as a Python literal
                           (a bare word stays a string: --init_from=gpt2)
An unknown key is an error naming the closest valid one. Types follow the default: an int is accepted
for a float, a list for a tuple, and a field whose default is None takes any literal.
"""

import ast
import difflib
import os
import sys
import traceback
import types
from dataclasses import fields

from kronygpt.errors import ConfigError, Stopped, UserError




def coerce(name, value, default, source):
    """value converted to the type of `default`, or a ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, tuple):
        if isinstance(value, (tuple, list)):
            return tuple(value)
    elif isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"{source}: {name} must be a {type(default).__name__} like its default "
                      f"{default!r}, got {value!r}")


def set_field(cfg, name, value, source):
    valid = [f.name for f in fields(cfg)]
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
        raise ConfigError(f"{source}: unknown config key {name!r}{hint}")
    setattr(cfg, name, coerce(name, value, getattr(cfg, name), source))


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: keep it as a string


def configure(cfg, args, verbose=True):
    """Apply config files and --key=value overrides to the dataclass instance cfg; returns cfg."""
    for arg in args:
        if arg.startswith("--"):
            if "=" not in arg:
                raise ConfigError(f"argument {arg!r} must look like --key=value")
            key, val = arg[2:].split("=", 1)
            value = parse_value(val)
            if isinstance(getattr(cfg, key, None), str) and not isinstance(value, str):
                value = val  # a text field keeps the text as typed (e.g. a JSON list, or digits)
            set_field(cfg, key, value, f"--{key}")
        else:
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg} does not exist (arguments are config files or --key=value)")
            if not arg.endswith(".py"):
                raise ConfigError(f"config file {arg} is not a .py file (arguments are config files or --key=value)")
            namespace = {}
            with open(arg) as f:
                source = f.read()
            try:
                exec(compile(source, arg, "exec"), namespace)
            except SyntaxError as e:
                raise ConfigError(f"config file {arg}, line {e.lineno}: {e.msg}") from None
            except Exception as e:  # a config file is Python: any error it raises is the file's
                line = next((t.lineno for t in traceback.extract_tb(e.__traceback__) if t.filename == arg), "?")
                raise ConfigError(f"config file {arg}, line {line}: {type(e).__name__}: {e}") from None
            for key, val in namespace.items():
                if key.startswith("_") or isinstance(val, (types.ModuleType, types.FunctionType, type)):
                    continue
                set_field(cfg, key, val, arg)
            if verbose:
                print(f"config: applied {arg}")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def as_dict(cfg):
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def run_cli(main):
    """Run main(). A user error (errors.UserError: bad config, missing file, impossible shape) prints one
    line and exits with status 2; a run stopped by a signal exits with 128 + the signal after saving. Any
    other exception is a bug and keeps its traceback. KRONY_DEBUG=1 shows the traceback of user errors too."""
    try:
        return main()
    except UserError as e:
        if os.environ.get("KRONY_DEBUG"):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
