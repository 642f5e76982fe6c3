"""docs/ stays true to the tree: every repository path a page names exists, and every page that
the code, the README or another page points to exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = ("update_rule.md", "architecture.md", "configs.md")

#: A path of this repository written in backquotes: starts with a top-level folder or file.
_TOP = ("gwt/", "gwt_lab/", "configs/", "scripts/", "tests/", "docs/", "slurm/", "results/", ".ci/")
_PATH = re.compile(r"`((?:%s)[^`*<>{}\s]*)`" % "|".join(re.escape(t) for t in _TOP))


def _named_paths(text: str):
    for match in _PATH.finditer(text):
        yield match.group(1).split("::")[0].rstrip(".,:;")


def test_pages_exist():
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(PAGES)


def test_every_path_a_page_names_exists():
    missing = []
    for page in PAGES:
        text = (DOCS / page).read_text()
        paths = list(_named_paths(text))
        assert paths, f"{page} names no repository path (the pattern is broken)"
        missing += [f"docs/{page}: {path}" for path in paths if not (ROOT / path).exists()]
    assert missing == []


def test_path_pattern_finds_paths_and_skips_placeholders():
    found = list(_named_paths("see `gwt/optim/adamw.py`, `configs/model/` and `configs/<group>/x.yaml`, "
                              "`gwt.optim.adamw` and `tests/lib/test_docs.py::test_pages_exist`."))
    assert found == ["gwt/optim/adamw.py", "configs/model/", "tests/lib/test_docs.py"]


def test_readme_links_to_every_page():
    readme = (ROOT / "README.md").read_text()
    assert [page for page in PAGES if f"docs/{page}" not in readme] == []
