"""CITATION.cff is valid CFF 1.2.0 for the software and cites the paper it reproduces; LICENSE
and CHANGELOG.md agree with pyproject.toml."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOI = "10.1007/978-3-030-86380-7_17"
# CFF 1.2.0 (https://github.com/citation-file-format/citation-file-format, schema.json)
TOP_KEYS = {
    "abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
    "identifiers", "keywords", "license", "license-url", "message", "preferred-citation",
    "references", "repository", "repository-artifact", "repository-code", "title", "type", "url",
    "version"}
REQUIRED = {"cff-version", "message", "title", "authors"}
REFERENCE_KEYS = {
    "abbreviation", "abstract", "authors", "collection-doi", "collection-title",
    "collection-type", "commit", "conference", "contact", "copyright", "data-type", "database",
    "database-provider", "date-accessed", "date-downloaded", "date-published", "date-released",
    "department", "doi", "edition", "editors", "editors-series", "end", "entry", "filename",
    "format", "identifiers", "institution", "isbn", "issn", "issue", "issue-date", "issue-title",
    "journal", "keywords", "languages", "license", "license-url", "loc-end", "loc-start",
    "location", "medium", "month", "nihmsid", "notes", "number", "number-volumes", "pages",
    "patent-states", "pmcid", "publisher", "recipients", "repository", "repository-artifact",
    "repository-code", "scope", "section", "senders", "start", "status", "term", "thesis-type",
    "title", "translators", "type", "url", "version", "volume", "volume-title", "year",
    "year-original"}
DOI_PATTERN = re.compile(r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$")


def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_citation_cff_is_valid_and_cites_the_paper() -> None:
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert REQUIRED <= set(cff), REQUIRED - set(cff)
    assert set(cff) <= TOP_KEYS, set(cff) - TOP_KEYS
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["version"] == project()["version"]
    assert cff["license"] == project()["license"] == "MIT"
    assert all(isinstance(a, dict) and ({"name"} & set(a) or {"family-names"} & set(a))
               for a in cff["authors"])

    (paper,) = [ref for ref in cff["references"] if ref.get("doi") == DOI]
    assert set(paper) <= REFERENCE_KEYS, set(paper) - REFERENCE_KEYS
    assert DOI_PATTERN.match(paper["doi"])
    assert paper["type"] == "conference-paper"
    assert paper["title"] == ("Jacobian Regularization for Mitigating Universal Adversarial "
                              "Perturbations")
    assert [a["family-names"] for a in paper["authors"]] == ["Co", "Martinez-Rego", "Lupu"]
    assert (paper["year"], paper["volume"], paper["start"], paper["end"]) == (2021, 12894, 202,
                                                                               213)
    assert paper["conference"]["name"] == "ICANN 2021"
    assert {i["value"] for i in paper["identifiers"]} == {DOI, "arXiv:2104.10459"}
    assert {i["type"] for i in paper["identifiers"]} <= {"doi", "url", "swh", "other"}


def test_license_is_the_mit_licence_of_pyproject() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the jacreg authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_changelog_starts_with_unreleased_and_names_real_commits() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Unreleased"
    hashes = set(re.findall(r"\b[0-9a-f]{7}\b", text))
    assert len(hashes) >= 10
    # every hash named is a commit of this repository's history when git can tell
    proc = subprocess.run(["git", "log", "--format=%h", "--abbrev=7"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        known = set(proc.stdout.split())
        assert hashes <= known, hashes - known
