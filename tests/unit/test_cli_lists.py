"""`fnstack list-apis` lists only what is really served; `list-distributions` is whole."""

from __future__ import annotations

from click.testing import CliRunner

from fnstack.cli import main
from fnstack.services import available_services
from fnstack.spec import Api


def _plain(args: list[str]) -> str:
    # A wide terminal: rich wraps cells to the width, and the test reads whole lines.
    result = CliRunner().invoke(main, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def test_list_apis_names_only_served_apis() -> None:
    out = _plain(["list-apis"])
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    rows.pop("api", None)
    served = {api.value for s in available_services().values() for api in s.apis}
    assert set(rows) == served
    # APIs with no service behind them (yet) must not be offered.
    for api in Api:
        if api.value not in served:
            assert api.value not in rows
    assert "remote::openai" in rows["inference"]
    assert "(those of inference)" in rows["models"]


def test_list_distributions_prints_whole_first_paragraph() -> None:
    out = " ".join(_plain(["list-distributions"]).split())
    assert "leave it unset on AWS." in out
    assert "Every path lives under FNSTACK_HOME (default ~/.fnstack)." in out
