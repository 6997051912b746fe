"""``canaryws flags``: what an operator sees and what happens to the flags file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from canaryws.adapters.flags.backend import FlagBackend
from canaryws.adapters.flags.file_backend import FileFlagBackend
from canaryws.adapters.flags.file_store import read_document
from canaryws.cli.flags import flags_group
from canaryws.core.flagdoc import describe

REPO_FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "features.json"
    path.write_bytes(REPO_FLAGS.read_bytes())
    return path


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(flags_group, list(args), env=env)


def rows(path: Path) -> dict[str, tuple[bool, int | None]]:
    return {row.name: (row.enabled, row.rollout) for row in describe(read_document(path))}


def test_file_backend_matches_the_protocol(flags_file: Path) -> None:
    backend: FlagBackend = FileFlagBackend(flags_file)
    listing = backend.describe()
    assert backend.location == str(flags_file)
    assert listing.source == "file"
    assert [row.name for row in listing.flags] == ["records.strict", "records.shadow"]


def test_show_prints_a_table_with_source_and_revision(flags_file: Path) -> None:
    result = run("show", "--flags", str(flags_file), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    revision = read_document(flags_file).revision
    assert f"(revision {revision})" in result.stdout
    assert "flags from file" in result.stdout
    for text in ("records.strict", "records.shadow", "flexibleRollout 0% (userId)", "0%", "100%"):
        assert text in result.stdout
    assert "Traceback" not in result.output


def test_show_json_is_machine_readable(flags_file: Path) -> None:
    result = run("show", "--json", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["source"] == "file"
    assert listing["location"] == str(flags_file)
    assert listing["revision"] == read_document(flags_file).revision
    assert listing["flags"][0] == {
        "name": "records.strict",
        "enabled": True,
        "rollout": 0,
        "strategies": "flexibleRollout 0% (userId)",
        "description": listing["flags"][0]["description"],
        "problems": [],
    }
    assert listing["flags"][1]["enabled"] is False
    assert listing["cohort_flags"] == {"records.strict": "ok", "records.shadow": "disabled"}
    assert listing["problems"] == []


def test_rollout_prints_one_line_and_updates_the_file(flags_file: Path) -> None:
    old = read_document(flags_file).revision
    result = run("rollout", "records.strict", "25", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    new = read_document(flags_file).revision
    assert result.stdout == f"records.strict: rollout 0% -> 25% (revision {old} -> {new}) in {flags_file}\n"
    assert result.stderr == ""
    assert rows(flags_file)["records.strict"] == (True, 25)


def test_rollout_accepts_a_percent_sign_and_reports_no_change(flags_file: Path) -> None:
    run("rollout", "records.strict", "5%", "--flags", str(flags_file))
    revision = read_document(flags_file).revision
    result = run("rollout", "records.strict", "5", "--flags", str(flags_file))
    assert result.exit_code == 0
    assert result.stdout == f"records.strict: rollout already 5% (revision {revision}, unchanged) in {flags_file}\n"


def test_rollout_of_a_disabled_flag_notes_when_it_takes_effect(flags_file: Path) -> None:
    result = run("rollout", "records.shadow", "10", "--flags", str(flags_file))
    assert result.exit_code == 0
    assert result.stdout.startswith("records.shadow: rollout 100% -> 10% (revision ")
    assert "records.shadow is disabled; the rollout takes effect once it is enabled" in result.stderr


@pytest.mark.parametrize("percent", ["150", "-5", "abc", "2.5"])
def test_an_invalid_percent_is_a_usage_error(flags_file: Path, percent: str) -> None:
    raw = flags_file.read_bytes()
    result = run("rollout", "records.strict", "--flags", str(flags_file), "--", percent)
    assert result.exit_code == 2
    assert "percent" in result.stderr
    assert flags_file.read_bytes() == raw


def test_an_unknown_flag_is_a_usage_error_listing_the_known_flags(flags_file: Path) -> None:
    for args in (("rollout", "records.strcit", "5"), ("enable", "nope"), ("disable", "nope"), ("archive", "nope")):
        result = run(*args, "--flags", str(flags_file))
        assert result.exit_code == 2, result.output
        assert "known flags: records.strict, records.shadow" in result.stderr
        assert result.stderr.startswith("Error: unknown flag")
        assert "Traceback" not in result.output
        assert "Usage:" not in result.stderr


def test_enable_and_disable(flags_file: Path) -> None:
    r1 = read_document(flags_file).revision
    result = run("enable", "records.shadow", "--flags", str(flags_file))
    r2 = read_document(flags_file).revision
    assert result.exit_code == 0
    assert result.stdout == f"records.shadow: disabled -> enabled (revision {r1} -> {r2}) in {flags_file}\n"
    assert rows(flags_file)["records.shadow"] == (True, 100)

    again = run("enable", "records.shadow", "--flags", str(flags_file))
    assert again.stdout == f"records.shadow: already enabled (revision {r2}, unchanged) in {flags_file}\n"

    killed = run("disable", "records.shadow", "--flags", str(flags_file))
    assert killed.exit_code == 0
    assert killed.stdout == f"records.shadow: enabled -> disabled (revision {r2} -> {r1}) in {flags_file}\n"


def test_a_missing_file_is_an_io_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    for args in (
        ("show",),
        ("rollout", "records.strict", "5"),
        ("enable", "records.strict"),
        ("archive", "records.strict"),
    ):
        result = run(*args, "--flags", str(missing))
        assert result.exit_code == 1
        assert result.stderr == f"Error: {missing}: cannot read flags file: No such file or directory\n"


def test_a_file_that_is_not_a_flags_document_is_reported_with_the_location(flags_file: Path) -> None:
    flags_file.write_text(flags_file.read_text().replace('"version": 2', '"version": "two"', 1))
    raw = flags_file.read_bytes()
    for args in (("show",), ("rollout", "records.strict", "5"), ("disable", "records.strict")):
        result = run(*args, "--flags", str(flags_file))
        assert result.exit_code == 1
        assert f'Error: {flags_file}: version: Input should be a valid integer (got "two")' in result.stderr
        assert "Traceback" not in result.output
    assert flags_file.read_bytes() == raw


def test_a_cohort_flag_the_service_cannot_evaluate_is_a_warning_and_disabling_it_works(flags_file: Path) -> None:
    flags_file.write_text(flags_file.read_text().replace('"name": "flexibleRollout"', '"name": "myCustom"', 1))
    result = run("show", "--flags", str(flags_file))
    assert result.exit_code == 0
    assert ("warning: records.strict cannot be evaluated as intended (features[0].strategies[0].name: strategy "
            "'myCustom' is not one the Unleash engine implements") in result.stderr
    assert "keeps its last good definition of records.strict" in result.stderr
    listing = json.loads(run("show", "--json", "--flags", str(flags_file)).stdout)
    assert listing["cohort_flags"]["records.strict"] == "invalid"
    assert [(p["flag"], p["kind"]) for p in listing["problems"]] == [("records.strict", "custom_strategy")]
    assert listing["flags"][0]["problems"][0].startswith("features[0].strategies[0].name: strategy 'myCustom'")
    result = run("disable", "records.strict", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    assert "records.strict: enabled -> disabled" in result.stdout
    assert "records.strict is disabled, which a service applies" in result.stderr
    assert read_document(flags_file).entries("records.strict")[0]["enabled"] is False


def test_problems_of_other_flags_are_warnings_and_edits_go_through(flags_file: Path) -> None:
    data = json.loads(flags_file.read_text())
    data["features"].append({"name": "payments.regex", "enabled": True, "strategies": [
        {"name": "default", "constraints": [{"contextName": "userId", "operator": "NOT_AN_OPERATOR", "value": "x"}]}]})
    data["features"].append({"name": "payments.broken", "enabled": "sometimes", "strategies": []})
    flags_file.write_text(json.dumps(data))
    result = run("show", "--flags", str(flags_file))
    assert result.exit_code == 0
    assert "warning: 2 problems in flags canaryws does not evaluate (invalid_shape: 1, unknown_operator: 1)" in (
        result.stderr)
    result = run("rollout", "records.strict", "5", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    assert rows(flags_file)["records.strict"] == (True, 5)


def test_archive_removes_the_flag_and_keeps_the_rest_of_the_file(flags_file: Path) -> None:
    before = json.loads(flags_file.read_text())
    old = read_document(flags_file).revision
    result = run("archive", "records.shadow", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    new = read_document(flags_file).revision
    assert new != old
    assert result.stdout == f"records.shadow: archived (revision {old} -> {new}) in {flags_file}\n"
    assert result.stderr == ""
    after = json.loads(flags_file.read_text())
    assert after == {**before, "features": [f for f in before["features"] if f["name"] != "records.shadow"]}
    assert rows(flags_file) == {"records.strict": (True, 0)}

    # The flag is gone: archiving it again is an unknown flag, the other commands still work.
    again = run("archive", "records.shadow", "--flags", str(flags_file))
    assert again.exit_code == 2
    assert again.stderr == "Error: unknown flag 'records.shadow' (known flags: records.strict)\n"
    assert run("rollout", "records.strict", "100", "--flags", str(flags_file)).exit_code == 0


def test_archiving_records_strict_notes_the_default_strategy(flags_file: Path) -> None:
    old = read_document(flags_file).revision
    result = run("archive", "records.strict", "--flags", str(flags_file))
    assert result.exit_code == 0, result.output
    new = read_document(flags_file).revision
    assert result.stdout == f"records.strict: archived (revision {old} -> {new}) in {flags_file}\n"
    assert result.stderr == (
        "note: records.strict is archived: replicas without CANARYWS_DEFAULT_STRATEGY=strict fall back to the "
        "lenient strategy for every client\n"
    )
    assert read_document(flags_file).feature_names() == ["records.shadow"]


def test_show_works_on_a_document_without_records_strict(flags_file: Path) -> None:
    assert run("archive", "records.strict", "--flags", str(flags_file)).exit_code == 0
    table = run("show", "--flags", str(flags_file), env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "records.shadow" in table.stdout and "records.strict" not in table.stdout
    listing = run("show", "--json", "--flags", str(flags_file))
    assert listing.exit_code == 0, listing.output
    assert [row["name"] for row in json.loads(listing.stdout)["flags"]] == ["records.shadow"]
    assert json.loads(listing.stdout)["revision"] == read_document(flags_file).revision


def test_archive_of_an_unknown_flag_leaves_the_file_unchanged(flags_file: Path) -> None:
    raw = flags_file.read_bytes()
    result = run("archive", "records.strcit", "--flags", str(flags_file))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "Error: unknown flag 'records.strcit' (known flags: records.strict, records.shadow)\n"
    assert flags_file.read_bytes() == raw


def test_archive_of_a_flag_another_depends_on_is_refused(flags_file: Path) -> None:
    data = json.loads(flags_file.read_text())
    data["features"][1]["dependencies"] = [{"feature": "records.strict", "enabled": True}]
    flags_file.write_text(json.dumps(data, indent=2))
    raw = flags_file.read_bytes()
    result = run("archive", "records.strict", "--flags", str(flags_file))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: cannot archive 'records.strict': 'records.shadow' depends on it; remove the dependency first\n"
    )
    assert flags_file.read_bytes() == raw
    # The dependent itself can go; then the flag it depended on can too.
    assert run("archive", "records.shadow", "--flags", str(flags_file)).exit_code == 0
    assert run("archive", "records.strict", "--flags", str(flags_file)).exit_code == 0
    assert read_document(flags_file).feature_names() == []


def test_the_flags_path_comes_from_the_environment(flags_file: Path) -> None:
    result = run("rollout", "records.strict", "50", env={"CANARYWS_FLAGS": str(flags_file)})
    assert result.exit_code == 0, result.output
    assert rows(flags_file)["records.strict"] == (True, 50)


def test_the_default_path_is_relative_to_the_working_directory(
    flags_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (flags_file.parent / "flags").mkdir()
    flags_file.rename(flags_file.parent / "flags" / "features.json")
    monkeypatch.chdir(flags_file.parent)
    monkeypatch.delenv("CANARYWS_FLAGS", raising=False)
    result = run("show", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["location"] == "flags/features.json"


def test_installed_cli_runs_flags_commands(flags_file: Path) -> None:
    """End to end through the console script that ``uv sync`` installs."""
    script = Path(sys.executable).with_name("canaryws")
    assert script.exists(), f"the canaryws console script is not installed next to {sys.executable}"
    done = subprocess.run(
        [str(script), "flags", "rollout", "records.strict", "1", "--flags", str(flags_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("records.strict: rollout 0% -> 1% (revision ")
    assert rows(flags_file)["records.strict"] == (True, 1)
