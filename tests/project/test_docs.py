"""The documentation stays true to the code.

* docs/wire-format.md's tables are what `docs/gen_wire_tables.py` writes from the code today;
* every relative link in README.md, SECURITY.md and docs/ names a file of the repository, and
  nothing points outside it;
* every file path (`channel/protocol/ring.py`) and dotted name
  (`channel.protocol.sides.ServerSide.take`) that the
  documents quote as code exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO / "README.md", REPO / "SECURITY.md", *(REPO / "docs").glob("*.md")])
PACKAGES = ("channel", "backend_server", "fusefront")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_wire_tables", REPO / "docs/gen_wire_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wire_format_tables_are_up_to_date() -> None:
    gen = _generator()
    current = gen.DOC.read_text(encoding="utf-8")
    assert gen.render(current) == current, (
        "docs/wire-format.md is out of date with the code: run python docs/gen_wire_tables.py"
    )


def test_generator_notices_a_changed_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a different header layout gives a different document."""
    gen = _generator()
    current = gen.DOC.read_text(encoding="utf-8")
    import struct

    from channel.protocol import codec as protocol

    monkeypatch.setattr(protocol, "COMPLETION_HEADER", struct.Struct("<QiIIiQQ"))
    with pytest.raises(ValueError, match="7 fields, 6 names"):
        gen.render(current)
    monkeypatch.setattr(protocol, "COMPLETION_HEADER", struct.Struct("<QiIIqQ"))
    changed = gen.render(current)
    assert changed != current and "| `buf` | i64 | 20 | 8 |" in changed


def test_generator_refuses_a_document_without_its_blocks() -> None:
    gen = _generator()
    with pytest.raises(SystemExit, match="lacks the blocks"):
        gen.render("# no tables here\n")


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    assert "../shared" not in text and "/work/" not in text
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (document.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"


_CODE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(
    r"^(?:channel|backend_server|fusefront|tests|benchmarks|examples|scripts|docs)/\S+$"
)
_DOTTED = re.compile(r"^(?:channel|backend_server|fusefront)(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _resolve(name: str) -> object:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_quoted_code_exists(document: Path) -> None:
    missing = []
    for quoted in _CODE.findall(document.read_text(encoding="utf-8")):
        quoted = quoted.strip().rstrip(",.:;")
        if _PATH.match(quoted):
            if not (REPO / quoted.rstrip("/")).exists():
                missing.append(quoted)
        elif _DOTTED.match(quoted):
            try:
                _resolve(quoted)
            except (ModuleNotFoundError, AttributeError):
                missing.append(quoted)
    assert not missing, f"{document.name} quotes code that does not exist: {missing}"
