"""docs/asyncapi.yaml, the machine-readable contract: generated from the wire types
(canaryws.core.asyncapi), committed as generated, complete, and valid for the AsyncAPI CLI
(npm @asyncapi/cli, installed by ``make asyncapi-cli``). The contract's constants agree with
the types' ``Literal`` s, and the refusals the adapters send are the contract's table."""

from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from jsonschema import Draft7Validator

from canaryws.cli.contract import render
from canaryws.core import contract
from canaryws.core.asyncapi import document
from canaryws.core.strategies import STRATEGIES
from canaryws.core.strategies.reasons import ALL_REASONS
from contract_check import validate_client_frame, validate_server_frame
from harness import REPO, run_cli

COMMITTED = REPO / "docs" / "asyncapi.yaml"
ASYNCAPI_CLI = REPO / "tools" / "asyncapi" / "node_modules" / ".bin" / "asyncapi"
ADAPTERS = REPO / "src" / "canaryws" / "adapters"


def literal(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def field_type(struct: type[msgspec.Struct], name: str) -> Any:
    return typing.get_type_hints(struct, include_extras=True)[name]


# -- the constants and the types' Literals ---------------------------------------------------------


def test_the_contracts_constants_are_the_literals_of_the_wire_types() -> None:
    assert literal(contract.ErrorCode) == contract.ERROR_CODES
    assert literal(field_type(contract.Error, "code")) == literal(contract.ErrorCode)
    assert tuple(contract.ERROR_MEANINGS) == contract.ERROR_CODES
    assert literal(contract.ReasonCode) == ALL_REASONS
    assert literal(field_type(contract.Skipped, "reason")) == literal(field_type(contract.Rejected, "code")) \
        == ALL_REASONS
    assert set(STRATEGIES) == set(literal(contract.StrategyName))
    assert literal(field_type(contract.CohortInfo, "strategy")) == literal(field_type(contract.Result, "strategy")) \
        == literal(contract.StrategyName)
    assert literal(field_type(contract.Welcome, "protocol")) == contract.SUPPORTED_PROTOCOLS
    assert literal(field_type(contract.Batch, "type")) == contract.CLIENT_MESSAGE_TYPES


def test_the_tables_have_one_row_per_name_and_the_documented_retry_advice() -> None:
    refusals = {r.error: r for r in contract.HANDSHAKE_REFUSALS}
    closes = {c.code: c for c in contract.CLOSE_CODES}
    assert len(refusals) == len(contract.HANDSHAKE_REFUSALS) and len(closes) == len(contract.CLOSE_CODES)
    assert {(r.status, r.error) for r in contract.HANDSHAKE_REFUSALS} == {
        (400, "unsupported_subprotocol"), (400, "duplicate_header"), (401, "missing_token"), (401, "invalid_token"),
        (403, "origin_not_allowed"), (408, "header_timeout"), (429, "too_many_connections"),
        (429, "too_many_handshakes_from_source"), (429, "too_many_handshakes"), (431, "header_too_large"),
        (503, "over_capacity"),
    }
    assert set(closes) == {1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013}
    assert {code for code, c in closes.items() if c.retryable} == {1001, 1006, 1011, 1012, 1013}
    for r in contract.HANDSHAKE_REFUSALS:
        if r.status in (429, 503):
            assert r.retryable, r
        if r.status in (400, 401, 403, 431):
            assert not r.retryable, r
    assert {r.error for r in contract.HANDSHAKE_REFUSALS if r.retry_after} == {
        "too_many_handshakes_from_source", "too_many_handshakes", "over_capacity"}


# -- the refusals the adapters send ----------------------------------------------------------------


def refusals_sent_by(path: Path) -> set[tuple[int, str]]:
    """The (status, error) of every refusal built in a module: ``Refusal(status, error, ...)``,
    the calls of a function that wraps one with a fixed status (``_too_many(error, ...)``), and
    the door's raw answers (``_response("408 ...", error, ...)``). An error that is not a string
    literal, a module constant or a name of canaryws.core.contract fails the test (it could not
    be checked)."""
    tree = ast.parse(path.read_text(), str(path))
    constants = {
        target.id: node.value.value
        for node in tree.body if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets if isinstance(target, ast.Name)
    }

    def text(node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name is not None and isinstance(getattr(contract, name, None), str):
            return str(getattr(contract, name))
        raise AssertionError(f"{path.name}:{node.lineno}: cannot read the error name {ast.unparse(node)}")

    def name_of(call: ast.Call) -> str | None:
        return call.func.id if isinstance(call.func, ast.Name) else \
            call.func.attr if isinstance(call.func, ast.Attribute) else None

    def error_arg(call: ast.Call, position: int, keyword: str) -> ast.expr:
        if len(call.args) > position:
            return call.args[position]
        return next(k.value for k in call.keywords if k.arg == keyword)

    wrappers: dict[str, tuple[int, int]] = {}  # function -> (status, position of its error parameter)
    inside_wrappers: set[int] = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        params = [a.arg for a in function.args.args]
        for call in ast.walk(function):
            if isinstance(call, ast.Call) and name_of(call) == "Refusal":
                status, error = call.args[0], error_arg(call, 1, "error")
                if isinstance(error, ast.Name) and error.id in params and isinstance(status, ast.Constant):
                    wrappers[function.name] = (int(status.value), params.index(error.id))
                    inside_wrappers.add(id(call))

    found: set[tuple[int, str]] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or id(call) in inside_wrappers:
            continue
        name = name_of(call)
        if name == "Refusal":
            status = call.args[0]
            assert isinstance(status, ast.Constant), f"{path.name}:{call.lineno}: a status that is not a literal"
            found.add((int(status.value), text(error_arg(call, 1, "error"))))
        elif name in wrappers:
            status_code, position = wrappers[name]
            found.add((status_code, text(call.args[position])))
        elif name == "_response" and path.name == "door.py":
            status_line = call.args[0]
            assert isinstance(status_line, ast.Constant), f"door.py:{call.lineno}: a status that is not a literal"
            found.add((int(str(status_line.value).split()[0]), text(call.args[1])))
    return found


def test_the_refusals_the_adapters_send_are_exactly_the_contracts_table() -> None:
    """admission.py, gate.py and endpoint.py (the handshake) and door.py (before any request)
    refuse with exactly the (status, error) pairs of contract.HANDSHAKE_REFUSALS, which
    docs/asyncapi.yaml lists; so does every other adapter module (none refuses today)."""
    by_module = {path.relative_to(ADAPTERS).as_posix(): refusals_sent_by(path)
                 for path in sorted(ADAPTERS.rglob("*.py"))}
    for module in ("records/admission.py", "records/gate.py", "records/endpoint.py", "server/door.py"):
        assert by_module[module], f"no refusal found in {module}: has the way it builds them changed?"
    sent = set().union(*by_module.values())
    table = {(r.status, r.error) for r in contract.HANDSHAKE_REFUSALS}
    assert sent == table, f"sent, not in the table: {sent - table}; in the table, never sent: {table - sent}"


# -- the generated document ------------------------------------------------------------------------


def test_the_committed_document_is_what_the_code_generates() -> None:
    """Fails when docs/asyncapi.yaml was edited by hand or the types changed without regenerating
    it: run ``canaryws contract asyncapi --output docs/asyncapi.yaml``."""
    assert COMMITTED.read_text(encoding="utf-8") == render(), \
        "docs/asyncapi.yaml is stale: run `canaryws contract asyncapi --output docs/asyncapi.yaml`"
    done = run_cli("contract", "asyncapi", "--output", str(COMMITTED), "--check")
    assert done.returncode == 0, done.stderr
    assert "is up to date" in done.stderr


def test_the_command_writes_the_document_and_its_check_shows_a_diff(tmp_path: Path) -> None:
    written = tmp_path / "asyncapi.yaml"
    done = run_cli("contract", "asyncapi", "--output", str(written))
    assert done.returncode == 0, done.stderr
    assert written.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    stdout = run_cli("contract", "asyncapi")
    assert stdout.returncode == 0 and stdout.stdout == written.read_text(encoding="utf-8")

    written.write_text(written.read_text(encoding="utf-8").replace("strategy_version", "version", 1))
    stale = run_cli("contract", "asyncapi", "--output", str(written), "--check")
    assert stale.returncode == 1
    assert f"--- {written}\n+++ generated\n" in stale.stderr
    assert any(line.startswith("-") and "version" in line and "strategy_version" not in line
               for line in stale.stderr.splitlines())
    assert "is not what the code generates" in stale.stderr
    assert written.read_text(encoding="utf-8") != COMMITTED.read_text(encoding="utf-8")  # --check writes nothing

    missing = run_cli("contract", "asyncapi", "--output", str(tmp_path / "absent.yaml"), "--check")
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    usage = run_cli("contract", "asyncapi", "--check")
    assert usage.returncode == 2 and "--output" in usage.stderr


def test_the_document_describes_the_endpoint_security_and_operations() -> None:
    doc = document()
    assert doc["asyncapi"].startswith("3.0")
    channel = doc["channels"]["records"]
    assert channel["address"] == "/records"
    assert channel["x-canaryws-subprotocols"] == [contract.PROTOCOL_V2, contract.PROTOCOL_V1]
    ws = channel["bindings"]["ws"]
    assert ws["method"] == "GET" and "access_token" in ws["query"]["properties"]
    for protocol in (contract.PROTOCOL_V2, contract.PROTOCOL_V1):
        assert protocol in ws["headers"]["properties"]["Sec-WebSocket-Protocol"]["description"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["httpBearer"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": ""}
    assert schemes["accessToken"] | {"description": ""} == {
        "type": "httpApiKey", "name": "access_token", "in": "query", "description": ""}
    assert doc["servers"]["local"]["security"] == [
        {"$ref": "#/components/securitySchemes/httpBearer"}, {"$ref": "#/components/securitySchemes/accessToken"}]

    assert set(channel["messages"]) == {"welcome", "result", "cohort", "error", "batch"}
    actions = {
        name: (op["action"], [m["$ref"].rsplit("/", 1)[1] for m in op["messages"]])
        for name, op in doc["operations"].items()
    }
    assert actions == {
        "receiveBatch": ("receive", ["batch"]), "sendWelcome": ("send", ["welcome"]),
        "sendResult": ("send", ["result"]), "sendCohort": ("send", ["cohort"]), "sendError": ("send", ["error"]),
    }
    reply = doc["operations"]["receiveBatch"]["reply"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in reply["messages"]] == ["result", "error"]


def test_server_messages_are_closed_and_the_batch_is_open() -> None:
    schemas = document()["components"]["schemas"]
    for name in ("Welcome", "CohortInfo", "Result", "Accepted", "Skipped", "Rejected", "CohortChange", "Error"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["Batch"]["additionalProperties"] is True
    assert set(schemas["Batch"]["properties"]["records"]["items"]) <= {"description"}  # any JSON value
    validate_client_frame('{"type":"batch","id":"b","records":[1,true,{"a":[null]},[],"x",null],"extra":{}}')
    with pytest.raises(AssertionError, match="Additional properties"):
        validate_server_frame('{"type":"cohort","cohort":{"strategy":"strict","strategy_version":1,"shadow":false,'
                              '"flags_revision":"r"},"reason":"flags_changed","extra":1}')
    for schema in schemas.values():
        Draft7Validator.check_schema(schema)


def test_the_tables_and_error_meanings_are_in_the_document() -> None:
    doc = document()
    channel = doc["channels"]["records"]
    assert channel["x-canaryws-handshake-refusals"] == [
        {"status": r.status, "error": r.error, "meaning": r.meaning, "retryable": r.retryable,
         "retry_after": r.retry_after} for r in contract.HANDSHAKE_REFUSALS]
    assert channel["x-canaryws-close-codes"] == [
        {"code": c.code, "name": c.name, "meaning": c.meaning, "retryable": c.retryable} for c in contract.CLOSE_CODES]
    for r in contract.HANDSHAKE_REFUSALS:
        assert f"| {r.status} | `{r.error}` |" in channel["description"]
    for c in contract.CLOSE_CODES:
        assert f"| {c.code} | {c.name} |" in channel["description"]
    error = doc["components"]["messages"]["error"]
    assert error["x-canaryws-error-codes"] == [
        {"code": code, "meaning": contract.ERROR_MEANINGS[code]} for code in contract.ERROR_CODES]
    assert set(doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]) == set(contract.ERROR_CODES)


def test_the_examples_are_valid_frames_for_the_document_and_the_types() -> None:
    """Each message's examples validate against the document and decode into its Struct."""
    doc = document()
    structs = {"welcome": contract.Welcome, "result": contract.Result, "cohort": contract.CohortChange,
               "error": contract.Error}
    for name, message in doc["components"]["messages"].items():
        assert message["examples"], name
        for example in message["examples"]:
            text = json.dumps(example["payload"])
            if name == "batch":
                validate_client_frame(text)
                contract.decode_batch(text)
            else:
                validate_server_frame(text)
                msgspec.json.decode(text, type=contract.ServerMessage)
                assert isinstance(msgspec.json.decode(text, type=structs[name]), structs[name])


# -- the AsyncAPI CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME for the CLI with its analytics off (no notice, no network)."""
    if not os.access(ASYNCAPI_CLI, os.X_OK):
        pytest.fail(f"the AsyncAPI CLI is not installed ({ASYNCAPI_CLI}): run `make asyncapi-cli`", pytrace=False)
    home = tmp_path_factory.mktemp("asyncapi-home")
    subprocess.run([str(ASYNCAPI_CLI), "config", "analytics", "--disable"], env={**os.environ, "HOME": str(home)},
                   capture_output=True, text=True, timeout=120, check=True)
    return home


def asyncapi_validate(home: Path, path: Path) -> tuple[int, list[dict[str, Any]], str]:
    """``asyncapi validate PATH``, failing on warnings too: its exit status, its diagnostics, its output."""
    report = path.with_suffix(".diagnostics.json")
    done = subprocess.run(
        [str(ASYNCAPI_CLI), "validate", str(path), "--fail-severity", "warn", "--diagnostics-format", "json",
         "--save-output", str(report)],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=180)
    diagnostics = json.loads(report.read_text()) if report.exists() else []
    return done.returncode, diagnostics, done.stdout + done.stderr


ERROR, WARNING = 0, 1  # the CLI's (Spectral's) severities


def test_the_asyncapi_cli_finds_the_document_valid(asyncapi_home: Path, tmp_path: Path) -> None:
    copied = tmp_path / "asyncapi.yaml"
    shutil.copy(COMMITTED, copied)
    status, diagnostics, output = asyncapi_validate(asyncapi_home, copied)
    assert status == 0, output
    assert [d for d in diagnostics if d["severity"] in (ERROR, WARNING)] == [], output
    assert "is valid" in output


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if how == "wrong_ref":
        doc["components"]["messages"]["result"]["payload"] = {"$ref": "#/components/schemas/Nope"}
    elif how == "invalid_schema":
        doc["components"]["schemas"]["Result"]["properties"]["strategy_version"]["type"] = "integr"
    elif how == "operation_message_not_in_channel":
        del doc["channels"]["records"]["messages"]["cohort"]
    return doc


@pytest.mark.parametrize("how", ["wrong_ref", "invalid_schema", "operation_message_not_in_channel"])
def test_the_asyncapi_cli_rejects_a_broken_copy(asyncapi_home: Path, tmp_path: Path, how: str) -> None:
    """So that the test above can fail: the CLI does check what it is given."""
    broken = tmp_path / f"{how}.yaml"
    broken.write_text(yaml.safe_dump(_broken(yaml.safe_load(COMMITTED.read_text()), how), sort_keys=False))
    status, diagnostics, output = asyncapi_validate(asyncapi_home, broken)
    assert status != 0, output
    assert any(d["severity"] == ERROR for d in diagnostics), output
