#!/usr/bin/env python
"""
Write docs/configs.md: every config key that ``fcos_d2.config.add_fcos_config`` adds, with
its default and the comment that documents it in fcos_d2/config.py.

    python tools/gen_config_docs.py           # (re)write docs/configs.md
    python tools/gen_config_docs.py --check   # exit 1 if docs/configs.md is stale

The keys and their comments are read from the source of ``add_fcos_config`` (each
assignment ``_C.NAME = value`` or ``cfg.X.Y = value`` and the ``#`` lines above it; keys
assigned on consecutive lines share the comment above the first of them, and the
``# ---- section`` lines name the sections). The defaults are read from
``add_fcos_config(get_cfg())``, so they are the values a config really starts from. A key
of the built config without a comment, or a documented key missing from the config, is
an error that names the key.
"""

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PY = ROOT / "fcos_d2" / "config.py"
OUTPUT = ROOT / "docs" / "configs.md"
FUNCTION = "add_fcos_config"
FCOS_PREFIX = "MODEL.FCOS"
# What the names the function assigns through stand for.
BASES = {"_C": FCOS_PREFIX, "cfg": ""}

# Keys that fcos_d2/config.py assigns without a comment of their own. Only these may lack
# one (any other undocumented key is an error); a comment in config.py takes precedence.
# Delete an entry once config.py documents the key.

SECTION_RE = re.compile(r"^#\s*-{3,}\s*(?P<name>[\w\- ]*?)\s*$")


@dataclass
class Key:
    """One config key as config.py documents it."""

    name: str  # full dotted name, e.g. "MODEL.FCOS.NUM_CLASSES"
    section: str  # the "# ---- name" section it is in ("" before the first)
    doc: str  # the comment text, joined
    line: int  # 1-based line of the assignment in config.py
    group_head: str = ""  # the first key of its group, when it shares that key's comment


def _dotted(node: ast.expr) -> Optional[str]:
    """ "a.b.c" for an attribute chain on a name, else None."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _full_name(dotted: str) -> Optional[str]:
    base, _, rest = dotted.partition(".")
    if base not in BASES or not rest:
        return None
    return f"{BASES[base]}.{rest}" if BASES[base] else rest


def _is_node(value: ast.expr) -> bool:
    """Whether an assigned value is a new config node, ``CN()``."""
    return isinstance(value, ast.Call) and _dotted(value.func) in ("CN", "CfgNode")


def _statements(body: Sequence[ast.stmt]) -> List[ast.stmt]:
    """The statements of ``body``, with those inside ``if`` blocks, in source order."""
    out: List[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.If):
            out.extend(_statements(stmt.body))
            out.extend(_statements(stmt.orelse))
    return out


def _comment_text(lines: List[str]) -> str:
    """Join the comment lines (without "#"), leaving out a note that is one whole
    parenthesised line when other lines remain (such a note is about a key elsewhere)."""
    texts = [line.lstrip()[1:].strip() for line in lines]
    texts = [t for t in texts if t]
    notes = [t for t in texts if t.startswith("(") and t.endswith(")")]
    if notes and len(notes) < len(texts):
        texts = [t for t in texts if t not in notes]
    return " ".join(texts)


def parse_keys(source: str) -> List[Key]:
    """The keys ``add_fcos_config`` assigns in ``source`` (config.py), in source order,
    with their comments (``doc`` is "" where a key has none)."""
    tree = ast.parse(source)
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == FUNCTION]
    if len(funcs) != 1:
        raise ValueError(f"{CONFIG_PY}: expected one function {FUNCTION}, found {len(funcs)}")
    lines = source.splitlines()
    stmts = _statements(funcs[0].body)
    # Lines of code that a comment may sit above together with the key below them: other
    # assignments and the `if "KEY" not in cfg...:` guards.
    code_lines = set()
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            code_lines.add(stmt.lineno)
        elif isinstance(stmt, ast.Assign):
            code_lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))

    sections: Dict[int, str] = {}  # line -> section name starting there
    for i, line in enumerate(lines, start=1):
        m = SECTION_RE.match(line.strip())
        if m:
            sections[i] = m.group("name").strip()

    keys: List[Key] = []
    key_at_line: Dict[int, str] = {}
    for stmt in stmts:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        dotted = _dotted(stmt.targets[0])
        name = _full_name(dotted) if dotted else None
        if name is None or _is_node(stmt.value):
            continue
        # Walk up over the code lines of the key's group, then take the comment block.
        i = stmt.lineno - 1
        head = ""
        while i >= 1 and i in code_lines:
            head = key_at_line.get(i, head)
            i -= 1
        block: List[str] = []
        while i >= 1 and lines[i - 1].lstrip().startswith("#") and i not in sections:
            block.append(lines[i - 1])
            i -= 1
        section = next((sections[j] for j in sorted(sections, reverse=True) if j < stmt.lineno), "")
        doc = _comment_text(list(reversed(block)))
        keys.append(Key(name, section, doc, stmt.lineno, group_head=head))
        key_at_line[stmt.lineno] = name
    return keys


def build_cfg():
    """``add_fcos_config(get_cfg())``."""
    from detectron2.config import get_cfg

    from fcos_d2.config import add_fcos_config

    cfg = get_cfg()
    add_fcos_config(cfg)
    return cfg


def leaf_keys(node: Any, prefix: str) -> List[str]:
    """The dotted names of the leaves (non-node values) under a config node."""
    out: List[str] = []
    for k, v in node.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.extend(leaf_keys(v, name))
        else:
            out.append(name)
    return out


def lookup(cfg: Any, name: str) -> Any:
    node = cfg
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{name}: documented in {CONFIG_PY.name} but not in the built config")
        node = node[part]
    return node


def format_value(value: Any) -> str:
    """A default as one writes it in a YAML config or on the command line."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


_MD_SPECIAL = re.compile(r"([\\*_|<>\[\]])")
# Names with an underscore (config keys, files, identifiers): shown as code.
_IDENTIFIER = re.compile(r"(?<![\w`])[A-Za-z][\w./]*_[\w./]*\w")


def md_text(text: str) -> str:
    """Text for a Markdown table cell: names with an underscore as `code`, Markdown's
    special characters escaped elsewhere outside `code spans`, "|" escaped everywhere (it
    would end the cell)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unclosed backtick: take it literally
        parts = [text.replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("`" + part.replace("|", "\\|") + "`")
            continue
        pos = 0
        for m in _IDENTIFIER.finditer(part):
            out.append(_MD_SPECIAL.sub(r"\\\1", part[pos : m.start()]))
            out.append("`" + m.group(0) + "`")
            pos = m.end()
        out.append(_MD_SPECIAL.sub(r"\\\1", part[pos:]))
    return "".join(out)


def md_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', chr(92) + '|')}{fence}"


def documented_keys(cfg: Any = None, source: Optional[str] = None) -> List[Key]:
    """The keys of config.py with their comments, checked against the built config: every
    MODEL.FCOS leaf of ``cfg`` is documented, every documented key exists in ``cfg``."""
    cfg = build_cfg() if cfg is None else cfg
    source = CONFIG_PY.read_text() if source is None else source
    keys = parse_keys(source)
    names = [k.name for k in keys]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{CONFIG_PY.name} assigns these keys more than once: {dup}")
    for key in keys:
        lookup(cfg, key.name)  # raises KeyError naming the key
        if not key.doc:
            raise KeyError(
                f"{key.name} (fcos_d2/config.py line {key.line}) has no comment: document "
                "it with '#' lines directly above its assignment"
            )
    missing = [n for n in leaf_keys(lookup(cfg, FCOS_PREFIX), FCOS_PREFIX) if n not in names]
    if missing:
        raise KeyError(
            f"{missing[0]} is in the built config but not assigned (and documented) in "
            f"{FUNCTION} in fcos_d2/config.py" + (f" (also: {missing[1:]})" if missing[1:] else "")
        )
    return keys


# A comment that documents several keys is repeated in the rows of the later ones up to
# this length; longer, they refer to the first key's row.
REPEAT_SHARED_DOC = 120


def _table(rows: List[Key], cfg: Any) -> List[str]:
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key in rows:
        default = md_code(format_value(lookup(cfg, key.name)))
        meaning = md_text(key.doc)
        if key.group_head and len(key.doc) > REPEAT_SHARED_DOC:
            meaning = f"See `{key.group_head}` above (documented together)."
        out.append(f"| `{key.name}` | {default} | {meaning} |")
    return out


def render() -> str:
    """The text of docs/configs.md."""
    cfg = build_cfg()
    keys = documented_keys(cfg)
    fcos = [k for k in keys if k.name.startswith(FCOS_PREFIX + ".")]
    engine = [k for k in keys if not k.name.startswith(FCOS_PREFIX + ".")]
    sections: List[str] = []
    for key in fcos:
        if key.section not in sections:
            sections.append(key.section)

    out = [
        "# Config keys",
        "",
        "<!-- Generated by tools/gen_config_docs.py from fcos_d2/config.py; do not edit. -->",
        "",
        "*Back to the [README](../README.md).*",
        "",
        f"Every key that `fcos_d2.{FUNCTION}` adds to a Detectron2 config, with its default "
        f"(the value in `{FUNCTION}(get_cfg())`) and the comment that documents it in "
        "`fcos_d2/config.py`. After editing that file, regenerate this page with "
        "`python tools/gen_config_docs.py` (`tests/unit/core/test_docs.py` fails while it "
        "is stale).",
        "",
        f"- [{FCOS_PREFIX}](#modelfcos)",
    ]
    for section in sections:
        title = section.capitalize() or "General"
        out.append(f"  - [{title}](#{slug_of_title(title)})")
    out += [
        "- [Engine keys](#engine-keys)",
        "",
        f"## {FCOS_PREFIX}",
        "",
        f"{len(fcos)} keys; Detectron2's own keys (`MODEL.RESNETS.*`, `SOLVER.*`, "
        "`TEST.AUG.*`, ...) keep their Detectron2 meaning.",
    ]
    for section in sections:
        out += ["", f"### {section.capitalize() or 'General'}", ""]
        out += _table([k for k in fcos if k.section == section], cfg)
    out += [
        "",
        "## Engine keys",
        "",
        "Keys outside `MODEL.FCOS` that `fcos_d2.engine.Trainer` reads and Detectron2's config "
        "lacks (each is added only if the config does not have it yet).",
        "",
    ]
    out += _table(engine, cfg)
    return "\n".join(out) + "\n"


def slug_of_title(title: str) -> str:
    """GitHub's anchor of a heading (for the page's own contents list)."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if docs/configs.md differs, write nothing"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: docs/configs.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else None
        if current != text:
            state = "missing" if current is None else "stale"
            print(
                f"{args.output} is {state}: run `python tools/gen_config_docs.py` "
                "to regenerate it from fcos_d2/config.py",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
