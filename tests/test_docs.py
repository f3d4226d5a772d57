"""The documentation: the mkdocs site builds with --strict (no broken link, anchor or missing page), the
README's relative links point at files that exist, it lists every extra and console script, and every
--option the README and docs show is one the command has."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def mkdocs_missing() -> str | None:
    for module, package in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -c constraints.txt -e \".[docs]\")"
    return None


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner is not a build problem
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict from the repository's mkdocs.yml."""
    reason = mkdocs_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    result = build_site(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def outside_code(text: str) -> str:
    """Markdown without fenced blocks and inline code, whose brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text: str) -> list[str]:
    return [target for target in LINK.findall(outside_code(text))
            if not SCHEME.match(target) and not target.startswith("#")]


def test_mkdocs_build_strict(site):
    assert (site / "index.html").is_file()
    for page in sorted((ROOT / "docs").glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"docs/{page.name} was not built (is it in mkdocs.yml's nav?)"


def test_mkdocs_strict_fails_on_a_broken_link(tmp_path):
    """The build the suite runs can fail: the same site with one link to a missing page is refused."""
    reason = mkdocs_missing()
    if reason:
        pytest.skip(reason)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


def test_readme_relative_links_point_at_files():
    links = relative_links(README.read_text())
    assert len(links) >= 10, links  # the README links into docs/; a parser that finds nothing proves nothing
    missing = [target for target in links if not (ROOT / target.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_link_parser_catches_a_missing_file():
    text = "See [docs](docs/index.md), [gone](docs/gone.md#x), [web](https://example.org), `[code](x.md)`."
    assert relative_links(text) == ["docs/index.md", "docs/gone.md#x"]


def test_readme_anchors_into_docs_exist(site):
    """README links such as docs/scale.md#apclip-batch-... name a heading the built page really has."""
    checked = 0
    for target in relative_links(README.read_text()):
        path, _, anchor = target.partition("#")
        if not anchor or not path.startswith("docs/") or not path.endswith(".md"):
            continue
        stem = Path(path).stem
        html = (site / ("index.html" if stem == "index" else f"{stem}/index.html")).read_text()
        assert f'id="{anchor}"' in html, f"README.md: {path} has no heading #{anchor}"
        checked += 1
    assert checked >= 3


def test_docs_lists_and_tables_start_after_a_blank_line():
    """Python-Markdown (mkdocs) renders a list or table glued to the paragraph above it as plain text."""
    glued = []
    for page in sorted((ROOT / "docs").glob("*.md")) + [README]:
        lines = page.read_text().split("\n")
        fenced = False
        for number, (previous, line) in enumerate(zip(lines, lines[1:]), start=2):
            if line.startswith("```"):
                fenced = not fenced
            if fenced or previous.startswith("```") or not previous.strip():
                continue
            starts_block = re.match(r"(- |\* |\d+\. |\|)", line)
            continues_block = re.match(r"(\s*- |\s*\* |\s*\d+\. |\||\s+\S|#)", previous)
            if starts_block and not continues_block:
                glued.append(f"{page.name}:{number}")
    assert not glued, f"add a blank line before these lists/tables: {glued}"


def test_readme_lists_every_extra_and_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = README.read_text()
    missing_extras = [extra for extra in project["optional-dependencies"] if f"- `{extra}`:" not in readme]
    assert not missing_extras, f"README.md's Install section does not list the extras {missing_extras}"
    missing_scripts = [name for name in project["scripts"] if f"**`{name}`**" not in readme]
    assert not missing_scripts, f"README.md's Quick start has no entry for {missing_scripts}"


def test_readme_installs_from_the_clone():
    """apclip is not on a package index: `pip install "apclip[...]"` cannot work; the clone's -e . does."""
    text = README.read_text() + "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    # ```text blocks are recorded program output (a bench transcript keeps the hints of its day)
    text = re.sub(r"^```text\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    assert not re.search(r"pip install [^\n`]*[\"']?apclip\[", text)
    assert 'pip install -c constraints.txt -e ".[cpu]"' in README.read_text()


def test_license_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    license_text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT" and license_text.startswith("MIT License")
    assert "apclip developers" in license_text


def console_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def help_text(target: str, argv: list[str]) -> str:
    """What `COMMAND ARGV --help` prints, run in this process (argparse exits after printing it)."""
    module, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module), attr)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


def documented_command_lines(text: str) -> list[str]:
    """apclip-* command lines from fenced blocks and inline code, with continuation lines joined."""
    chunks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    chunks += re.findall(r"`(apclip-[a-z-]+ [^`]*)`", text)
    lines = []
    for chunk in chunks:
        for line in chunk.replace("\\\n", " ").split("\n"):
            lines += re.findall(r"(apclip-[a-z-]+(?: [^#|&;]*)?)", line)
    return lines


def test_documented_options_exist():
    """Every --option the README and docs show for a command is one its --help (or subcommand's) lists."""
    scripts = console_scripts()
    helps: dict[tuple[str, str | None], str] = {}
    unknown, checked = [], 0
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for line in documented_command_lines(page.read_text()):
            name, *words = line.split()
            if name not in scripts:
                continue
            if (name, None) not in helps:
                helps[name, None] = help_text(scripts[name], [])
            first = words[0] if words else ""
            listed = re.search(rf"^\s{{2,}}{re.escape(first)}\s", helps[name, None], re.MULTILINE)
            sub = first if first and not first.startswith("-") and listed else None
            if sub and (name, sub) not in helps:
                helps[name, sub] = help_text(scripts[name], [sub])
            for option in re.findall(r"(--[a-z][a-z0-9-]*)", " ".join(words)):
                checked += 1
                if not re.search(rf"{re.escape(option)}\b", helps[name, sub]):
                    unknown.append(f"{page.name}: {name}{' ' + sub if sub else ''} {option}")
    assert checked >= 50, checked  # the docs show many options; finding few means the parser broke
    assert not unknown, f"documented options the commands do not have: {sorted(set(unknown))}"


def test_option_check_catches_an_unknown_option():
    scripts = console_scripts()
    lines = documented_command_lines("```bash\napclip-infer video.mp4 --bogus-flag \\\n    --topk 3\n```\n")
    assert lines == ["apclip-infer video.mp4 --bogus-flag      --topk 3"]
    text = help_text(scripts["apclip-infer"], [])
    assert "--topk" in text and "--bogus-flag" not in text
