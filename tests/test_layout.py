"""The repo's map and house rules: the README's Layout table names every module and only modules that exist; no
library function takes more than eight parameters (STYLE.md, habit 18)."""

import ast
import glob
import os
import re

from conftest import REPO

# the Triton kernel takes every size and stride as its own argument (Triton's calling convention)
PARAMETER_EXEMPT = {"_strided_gemm_kernel"}


def layout_table():
    text = open(os.path.join(REPO, "README.md")).read()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]


def named_paths():
    """Every path the table names: 'kronygpt/a.py', then bare 'b.py' in the same cell are kronygpt/b.py too."""
    out = set()
    for cell in layout_table():
        prefix = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if "/" in name.rstrip("/"):
                prefix = name.rsplit("/", 1)[0] + "/" if name.startswith("kronygpt/") else ""
                out.add(name)
            else:
                out.add(prefix + name if prefix else name)
    return out


def test_every_module_named_in_the_layout_exists_and_every_module_is_named():
    named = named_paths()
    for name in named:
        assert glob.glob(os.path.join(REPO, name)), f"the README's Layout names {name}, which does not exist"
    library = {f"kronygpt/{os.path.basename(p)}" for p in glob.glob(os.path.join(REPO, "kronygpt", "*.py"))
               if not p.endswith("__init__.py")}
    commands = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "*.py"))}
    missing = sorted((library | commands) - named)
    assert not missing, f"modules the README's Layout does not name: {missing}"


def test_no_library_function_takes_more_than_eight_parameters():
    too_many = []
    for path in glob.glob(os.path.join(REPO, "kronygpt", "**", "*.py"), recursive=True) + [os.path.join(REPO,
                                                                                                 "model.py")]:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in PARAMETER_EXEMPT:
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                n = len(names) - (names[:1] in (["self"], ["cls"])) + bool(a.vararg) + bool(a.kwarg)
                if n > 8:
                    too_many.append(f"{os.path.basename(path)}:{node.lineno} {node.name} ({n})")
    assert not too_many, too_many


def test_experiments_share_through_common_only():
    """An experiment imports the library, model.py and experiments/common.py, never another experiment or a
    command; only common.py puts the repo on the import path."""
    experiments = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "experiments",
                                                                                             "*.py"))}
    commands = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "*.py"))} - {"model"}
    wrong, paths = [], []
    for name in sorted(experiments):
        source = open(os.path.join(REPO, "experiments", name + ".py")).read()
        if "sys.path.insert" in source and name != "common":
            paths.append(name)
        for node in ast.walk(ast.parse(source)):
            found = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            wrong += [f"{name} imports {m}" for m in found
                      if m.split(".")[0] in (experiments | commands) - {"common"}]
    assert not wrong, wrong
    assert not paths, f"experiments setting the import path themselves: {paths}"
