"""The maintainer's design lives in the repository and names modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fedcare"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_the_readme_points_to_the_design_in_the_repository_not_outside_it():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/architecture.md)" in readme
    for path in [ROOT / "README.md", ARCHITECTURE, *(ROOT / "docs").rglob("*.md")]:
        assert "../shared" not in path.read_text(), path


def test_every_module_the_design_names_exists():
    text = ARCHITECTURE.read_text()
    # Paths such as `runtime/site.py` (in the package, or from the repository root).
    named = set(re.findall(r"`([a-z_]+/[a-z_/]+\.py)`", text))
    assert len(named) > 30  # the design walks the code, not a handful of files
    missing = sorted(p for p in named if not (PACKAGE / p).is_file() and not (ROOT / p).is_file())
    # Bare names such as `heart.py` in a package's bullet: a module of a package it names.
    for bullet in re.split(r"\n- ", text.split("## Packages", 1)[1].split("\n## ", 1)[0]):
        packages = re.findall(r"\*\*`([a-z]+)/`\*\*", bullet)
        for name in re.findall(r"`([a-z_]+\.py)`", bullet):
            if not any((PACKAGE / pkg / name).is_file() for pkg in packages):
                missing.append(f"{'|'.join(packages)}/{name}")
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    described = set(re.findall(r"\*\*`([a-z]+)/`\*\*", text))
    assert packages <= described, f"packages the design does not describe: {packages - described}"


def test_the_install_line_works_from_a_clone():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[grpc,db]"' in readme
    assert 'pip install "fedcare[grpc,db]"' not in readme
