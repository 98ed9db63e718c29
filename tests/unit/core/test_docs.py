"""
The documentation: the README's length, docs/configs.md against tools/gen_config_docs.py,
and every relative link and #anchor in README.md and docs/*.md.
"""

import importlib.util
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def _load_generator():
    path = ROOT / "tools" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_config_docs", module)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# ------------------------------------------------------------------ Markdown helpers
FENCE_RE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN_RE = re.compile(r"(`+)(.+?)\1")
INLINE_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        m = FENCE_RE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation removed except
    hyphens, underscores and spaces, spaces turned into hyphens."""
    text = INLINE_LINK_RE.sub(r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_slugs(text: str) -> List[str]:
    """The anchors of a Markdown text's headings, in order, duplicates numbered as GitHub
    numbers them ("x", "x-1", "x-2", ...)."""
    occurrences: Dict[str, int] = {}  # as github-slugger counts them
    out = []
    for _, line in prose_lines(text):
        m = HEADING_RE.match(line)
        if not m:
            continue
        original = slug = github_slug(m.group(2))
        while slug in occurrences:
            occurrences[original] += 1
            slug = f"{original}-{occurrences[original]}"
        occurrences[slug] = 0
        out.append(slug)
    return out


def links(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, target) of the Markdown links and images outside code."""
    for number, line in prose_lines(text):
        for m in LINK_RE.finditer(CODE_SPAN_RE.sub("", line)):
            yield number, m.group(1)


def markdown_files() -> List[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


# ------------------------------------------------------------------------- tests
def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move details to docs/"
    )


def test_configs_doc_is_up_to_date():
    path = DOCS / "configs.md"
    assert path.is_file(), "docs/configs.md is missing: run python tools/gen_config_docs.py"
    assert path.read_text() == gen.render(), (
        "docs/configs.md is stale (fcos_d2/config.py changed): run python tools/gen_config_docs.py"
    )


def test_every_fcos_key_is_documented():
    cfg = gen.build_cfg()
    text = (DOCS / "configs.md").read_text()
    keys = gen.leaf_keys(cfg.MODEL.FCOS, "MODEL.FCOS")
    assert len(keys) > 30
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"not in docs/configs.md: {missing}"
    for key in (
        "SOLVER.LOG_PERIOD",
        "SOLVER.AMP.CPU_PRECISION",
        "TEST.BEST_CHECKPOINT_METRIC",
        "TEST.BEST_CHECKPOINT_MODE",
        "MODEL.EMA.ENABLED",
        "MODEL.EMA.DECAY",
    ):
        assert f"`{key}`" in text, key


def test_undocumented_key_is_named():
    source = gen.CONFIG_PY.read_text()
    # The first FCOS key right below its comment, with a blank line put between them.
    m = re.search(r"#[^\n]*\n(\s+)_C\.(\w+) = ", source)
    assert m, "no documented _C key found in fcos_d2/config.py"
    broken = source[: m.start(1)] + "\n" + source[m.start(1) :]
    with pytest.raises(KeyError, match=rf"MODEL\.FCOS\.{m.group(2)}\b"):
        gen.documented_keys(gen.build_cfg(), broken)


def test_key_missing_from_source_is_named():
    source = gen.CONFIG_PY.read_text()
    cfg = gen.build_cfg()
    cfg.MODEL.FCOS.NOT_IN_CONFIG_PY = 1
    with pytest.raises(KeyError, match="MODEL.FCOS.NOT_IN_CONFIG_PY"):
        gen.documented_keys(cfg, source)


def test_check_mode(tmp_path, capsys):
    out = tmp_path / "configs.md"
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text() + "edited\n")
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert "gen_config_docs.py" in capsys.readouterr().err


def test_github_slug():
    cases = {
        "Fidelity: what each compat config reproduces": (
            "fidelity-what-each-compat-config-reproduces"
        ),
        "Exported models: ONNX, OpenVINO, torch.export": (
            "exported-models-onnx-openvino-torchexport"
        ),
        "Detectron2 0.6 from PyPI by hand": "detectron2-06-from-pypi-by-hand",
        "The `make` route": "the-make-route",
        "MODEL.FCOS": "modelfcos",
        "Precision-recall curves": "precision-recall-curves",
        "Your own COCO-format data": "your-own-coco-format-data",
        "SOLVER_LOG (20)": "solver_log-20",
        "See [the docs](docs/x.md)": "see-the-docs",
    }
    for heading, slug in cases.items():
        assert github_slug(heading) == slug, heading


def test_duplicate_headings_are_numbered():
    text = "# A\n## Usage\n```\n# Usage (in code: not a heading)\n```\n## Usage\n### Usage\n"
    assert heading_slugs(text) == ["a", "usage", "usage-1", "usage-2"]


def test_links_skip_code():
    text = "[a](x.md) `[b](y.md)` ![c](img.png)\n```\n[d](z.md)\n```\n[e](#f)\n"
    assert [t for _, t in links(text)] == ["x.md", "img.png", "#f"]


def test_links_resolve():
    problems = []
    slugs: Dict[Path, List[str]] = {}
    for source in markdown_files():
        rel = source.relative_to(ROOT)
        for number, target in links(source.read_text()):
            if re.match(r"^(https?:|mailto:)", target) or not target:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (source.parent / path_part).resolve() if path_part else source
            if not dest.exists():
                problems.append(f"{rel}:{number}: {target}: no file {path_part}")
                continue
            if anchor and dest.suffix == ".md":
                if dest not in slugs:
                    slugs[dest] = heading_slugs(dest.read_text())
                if anchor not in slugs[dest]:
                    problems.append(f"{rel}:{number}: {target}: no heading #{anchor}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_links_every_docs_page():
    text = README.read_text()
    targets = {t.partition("#")[0] for _, t in links(text)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if f"docs/{p.name}" not in targets]
    assert not missing, f"README.md does not link {missing}"
