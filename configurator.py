"""
nanoGPT's configurator, made strict, and the one way every command reads its options. Each command keeps its
settings in a dataclass (each field commented) and calls

    cfg = configure(TrainConfig(), sys.argv[1:])

Each argument is applied in order:
    config/some_file.py    a Python file whose top-level assignments override fields. Config files are
                           Python and are executed: run only config files you trust.
    --key=value            one override, split on the first '='; the value is parsed as a Python literal
    --key value            the same (the next argument is the value when it does not start with '--')
    --flag                 a bool field alone means True (--force, --allocate)
    --help                 the command's docstring and every field with its default and comment
A bare word stays a string (--init_from=gpt2). An unknown key is an error naming the closest valid one.
Types follow the default: an int is accepted for a float, a list for a tuple, and a field whose default is
None takes any literal. A command may also take positional words (plot.py's runs): they fill one field.
"""

import ast
import difflib
import inspect
import math
import os
import re
import sys
import traceback
import types
from dataclasses import fields

from kronygpt.errors import ConfigError, Stopped, UserError


INT_LIMIT = 2 ** 62  # room for the offsets a run adds to a seed (rank, step) inside a signed 64-bit integer


def coerce(name, value, default, source):
    """value converted to the type of `default`, or a ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(default) and not math.isfinite(float(value)):  # nan/inf would poison a run silently
                raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_LIMIT:  # seeds, counts and steps go to torch and numpy as 64-bit integers
                raise ConfigError(f"{source}: {name} {value} is out of range; give a whole number below 2**62")
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
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text  # a bare word: keep it as a string


def apply_override(cfg, key, text):
    value, default = parse_value(text), getattr(cfg, key, None)
    if isinstance(default, str) and not isinstance(value, str):
        value = text  # a text field keeps the text as typed (e.g. a JSON list, or digits)
    elif isinstance(default, float) and isinstance(value, str):
        try:
            value = float(text)  # 'nan', 'inf', '1e-3 ': a float the range checks then judge
        except ValueError:
            pass
    set_field(cfg, key, value, f"--{key}")


def apply_file(cfg, path):
    """Execute a config file and apply its top-level assignments. Whatever the file raises, or an exit() it
    calls, is reported as this file's error (never a silent exit with status 0)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist (arguments are config files or --key=value)")
    if not path.endswith(".py"):
        raise ConfigError(f"config file {path} is not a .py file (arguments are config files or --key=value)")
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"config file {path} could not be read as text ({type(e).__name__})") from None
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg}") from None
    except (SystemExit, KeyboardInterrupt) as e:  # a config that exits ends the command with an error, not 0
        raise ConfigError(f"config file {path} stopped the command ({type(e).__name__}"
                          f"{': ' + str(e) if str(e) else ''}); config files should only assign settings") from None
    except Exception as e:  # a config file is Python: any error it raises is the file's
        line = next((t.lineno for t in traceback.extract_tb(e.__traceback__) if t.filename == path), "?")
        raise ConfigError(f"config file {path}, line {line}: {type(e).__name__}: {e}") from None
    for key, val in namespace.items():
        if key.startswith("_") or isinstance(val, (types.ModuleType, types.FunctionType, type)):
            continue
        set_field(cfg, key, val, path)


def configure(cfg, args, verbose=True, positional=None, doc=None):
    """Apply config files and overrides (module docstring) to the dataclass instance cfg; returns cfg.
    positional: the name of a str field that collects positional words that are not .py files
    (comma-joined). doc: the text --help prints first (the command's docstring)."""
    args, i, words = list(args), 0, []
    bools = {f.name for f in fields(cfg) if isinstance(getattr(cfg, f.name), bool)}
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("--help", "-h"):
            print(usage(cfg, doc))
            raise SystemExit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                nxt = args[i] if i < len(args) else None
                if key in bools and (nxt is None or nxt.lower() not in ("true", "false")):
                    text = "True"  # a bare flag
                elif key in bools:
                    text, i = nxt.capitalize(), i + 1
                elif nxt is None or nxt.startswith("--"):
                    raise ConfigError(f"argument {arg!r} needs a value: write {arg}=VALUE or {arg} VALUE")
                else:
                    text, i = nxt, i + 1
            apply_override(cfg, key, text)
        elif positional and not arg.endswith(".py"):
            words.append(arg)
        else:
            apply_file(cfg, arg)
            if verbose:
                print(f"config: applied {arg}")
    if words:
        set_field(cfg, positional, ",".join(words), "positional arguments")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def field_comments(cls):
    """{field: its trailing '# comment'} read from the dataclass's source (for --help)."""
    out = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]*=[^\n#]*#\s*(.*)$", source, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def usage(cfg, doc=None):
    comments = field_comments(type(cfg))
    lines = [doc.strip(), ""] if doc else []
    lines.append("options (--key=value or --key value; config files: python SCRIPT config/FILE.py):")
    for f in fields(cfg):
        lines.append(f"  --{f.name}={getattr(cfg, f.name)!r:<20} {comments.get(f.name, '')}".rstrip())
    return "\n".join(lines)


def as_dict(cfg):
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def run_cli(main):
    """Run main(). A user error (errors.UserError: bad config, missing file, impossible shape) or a file system
    error (OSError: a full disk, a read-only folder) prints one line and exits with status 2; a run stopped by a
    signal exits with 128 + the signal after saving; a Ctrl-C anywhere else exits with 130 and one line. Any
    other exception is a bug and keeps its traceback.
    KRONY_DEBUG=1 shows the traceback of user errors too."""
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
    except OSError as e:  # the disk, not the program: a full disk, a read-only or missing folder, a lost file
        if os.environ.get("KRONY_DEBUG"):
            traceback.print_exc()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}; free disk space, check the path and its permissions, and run the "
              f"same command again (finished work is kept)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing more was written", file=sys.stderr)
        sys.exit(130)
