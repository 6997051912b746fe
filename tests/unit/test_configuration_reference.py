"""docs/configuration.md against the code: every variable the code reads is documented with the
default the code uses, and every documented variable is read.

- The variables the code names are the string constants ``CANARYWS_*``, ``UNLEASH_*`` and ``OTEL_*``
  in ``src/canaryws`` (read by :meth:`Settings.from_env`'s table, :meth:`UnleashSettings.from_env`
  and ``adapters/telemetry/environment.py``).
- A documented default, given explicitly, must give the same settings as leaving the variable unset
  (so ``./data``, ``10`` and ``256MiB`` are checked as the code parses them); a default written
  **unset** must be a ``None`` default in the code.
- Every documented ``CANARYWS_*`` and ``UNLEASH_*`` variable must be one of those the code reads;
  every documented ``OTEL_*`` one must be read by canaryws or by the OpenTelemetry packages.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from canaryws import settings as settings_module
from canaryws.adapters.telemetry import environment
from canaryws.settings import Settings, UnleashSettings

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
SRC = REPO / "src" / "canaryws"
NAME = re.compile(r"(?:CANARYWS|UNLEASH|OTEL)_[A-Z0-9_]*[A-Z0-9]")
ROW = re.compile(r"^\| `(?P<name>[A-Z][A-Z0-9_]+)` \| (?P<default>[^|]*) \|", re.M)
UNSET = None


@functools.cache
def documented() -> dict[str, str | None]:
    """Each documented variable (one per table row) and its default: the first backticked
    value of the default cell, or None for a cell that says **unset**."""
    rows: dict[str, str | None] = {}
    for match in ROW.finditer(DOC.read_text()):
        name, cell = match["name"], match["default"].strip()
        assert name not in rows, f"{name} is documented twice"
        value = re.match(r"`([^`]*)`", cell)
        assert value or cell.startswith("unset"), f"{name}: the default {cell!r} is neither `value` nor unset"
        rows[name] = value[1] if value else UNSET
    return rows


@functools.cache
def named_in_code() -> set[str]:
    """The variable names that stand whole as string constants in src/canaryws."""
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
                names.add(node.value)
    return names


@functools.cache
def settings_table() -> dict[str, str]:
    """:meth:`Settings.from_env`'s table, as variable -> the Settings field it sets."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Settings.from_env)))
    table: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(value, ast.Tuple) and value.elts:
                first = value.elts[0]
                if isinstance(first, ast.Name):  # a constant of the settings module, e.g. FLAGS_ENVVAR
                    variable = getattr(settings_module, first.id, None)
                else:
                    variable = first.value if isinstance(first, ast.Constant) else None
                if isinstance(variable, str) and NAME.fullmatch(variable):
                    table[variable] = key.value
    assert len(table) >= 30, f"Settings.from_env's table was not found: {table}"
    return table


@functools.cache
def unleash_fields() -> dict[str, str]:
    """The UNLEASH_* variables :meth:`UnleashSettings.from_env` reads, as variable -> field."""
    fields = {}
    for name in named_in_code():
        if name.startswith("UNLEASH_"):
            probe = UnleashSettings.from_env({name: "probe-value"})
            for field in dataclasses.fields(UnleashSettings):
                if getattr(probe, field.name) == "probe-value":
                    fields[name] = field.name
    return fields


def comparable(settings: Any) -> dict[str, Any]:
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    values.pop("environ", None)
    return values


@functools.cache
def readers() -> dict[str, tuple[Callable[[Mapping[str, str]], object], object]]:
    """Each CANARYWS_/UNLEASH_ variable the code reads: what reads it (a function of the
    environment whose result the variable changes) and its default in the code (None: unset)."""
    found: dict[str, tuple[Callable[[Mapping[str, str]], object], object]] = {}
    defaults = Settings(environ={})
    for variable, field in settings_table().items():
        found[variable] = (lambda env, f=field: getattr(Settings.from_env(env), f), getattr(defaults, field))
    for variable, field in unleash_fields().items():
        found[variable] = (lambda env, f=field: getattr(UnleashSettings.from_env(env), f),
                           getattr(UnleashSettings(), field))
    limits = environment.trace_file_limits({})
    found[environment.TRACE_FILE_MAX_BYTES_VAR] = (environment.trace_file_limits, limits.max_bytes)
    found[environment.TRACE_FILE_ROTATE_VAR] = (environment.trace_file_limits, limits.rotate)
    found[environment.WORKER_VAR] = (environment.trace_file_name, UNSET)
    return found


def test_every_variable_the_code_reads_is_documented() -> None:
    code = {n for n in named_in_code() if not n.startswith("OTEL_")}
    missing = code - set(documented())
    assert not missing, f"read by the code, missing from docs/configuration.md: {sorted(missing)}"
    unknown = code - set(readers())
    assert not unknown, f"named in the code, but this test does not know what reads them: {sorted(unknown)}"


def test_every_documented_variable_is_read() -> None:
    rows = {n for n in documented() if not n.startswith("OTEL_")}
    unread = rows - set(readers())
    assert not unread, f"documented in docs/configuration.md, read by nothing: {sorted(unread)}"


@pytest.mark.parametrize("variable", sorted(n for n in documented() if not n.startswith("OTEL_")))
def test_each_documented_default_is_the_codes(variable: str) -> None:
    """Given explicitly, the documented default changes nothing; unset, it is a None default."""
    assert variable in readers(), f"{variable} is documented, but nothing reads it"
    read, default = readers()[variable]
    value = documented()[variable]
    if value is UNSET:
        assert default is None, f"{variable}: documented as unset, but its default is {default!r}"
        return
    assert default is not None, f"{variable}: documented as {value!r}, but the code's default is unset (None)"
    assert read({variable: value}) == read({}), (
        f"{variable}={value!r} (the documented default) reads as {read({variable: value})!r}, "
        f"not as the default {read({}) !r}")


def test_the_settings_defaults_are_the_documented_ones_all_together() -> None:
    """Every CANARYWS_/UNLEASH_ default of the page at once gives the default settings."""
    env = {name: value for name, value in documented().items() if value is not None and not name.startswith("OTEL_")}
    assert comparable(Settings.from_env(env)) == comparable(Settings.from_env({}))
    assert UnleashSettings.from_env(env) == UnleashSettings.from_env({})


def test_the_opentelemetry_variables_are_the_ones_read() -> None:
    """The OTEL_* rows: every one canaryws names is there, every one there is read (by canaryws,
    whose docstrings name the OTLP exporter's per-signal forms, or by the OpenTelemetry packages),
    and the batch processor's defaults are the ones it uses."""
    rows = {n: v for n, v in documented().items() if n.startswith("OTEL_")}
    code = {n for n in named_in_code() if n.startswith("OTEL_")}
    assert code <= set(rows), f"read by the code, missing from docs/configuration.md: {sorted(code - set(rows))}"
    sources = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    spec = importlib.util.find_spec("opentelemetry")
    assert spec is not None and spec.submodule_search_locations is not None
    libraries = "\n".join(p.read_text(errors="replace") for location in spec.submodule_search_locations
                          for p in Path(location).rglob("*.py"))
    for name in rows:
        assert re.search(rf"\b{name}\b", sources) or re.search(rf"\b{name}\b", libraries), (
            f"{name} is documented but neither canaryws nor OpenTelemetry reads it")
    batch = environment.batch_settings({})
    for name in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                 "OTEL_BSP_EXPORT_TIMEOUT"):
        value = rows[name]
        assert value is not None and environment.batch_settings({name: value}) == batch, name
