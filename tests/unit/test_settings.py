"""Settings.from_env: CANARYWS_DEFAULT_STRATEGY (the strategy while records.strict is absent)."""

from __future__ import annotations

import pytest

from canaryws.settings import Settings


def test_the_default_strategy_is_lenient_unless_set() -> None:
    assert Settings.from_env({}).default_strategy == "lenient"
    assert Settings.from_env({"CANARYWS_DEFAULT_STRATEGY": ""}).default_strategy == "lenient"
    assert Settings().default_strategy == "lenient"


@pytest.mark.parametrize(("raw", "value"), [("strict", "strict"), (" STRICT ", "strict"), ("Lenient", "lenient")])
def test_the_default_strategy_is_read_case_insensitively(raw: str, value: str) -> None:
    assert Settings.from_env({"CANARYWS_DEFAULT_STRATEGY": raw}).default_strategy == value


@pytest.mark.parametrize("raw", ["bogus", "on", "true", "strict,lenient"])
def test_a_bad_default_strategy_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^CANARYWS_DEFAULT_STRATEGY=.*use lenient or strict"):
        Settings.from_env({"CANARYWS_DEFAULT_STRATEGY": raw})


def test_a_bad_default_strategy_is_refused_when_built_directly() -> None:
    with pytest.raises(ValueError, match="default_strategy must be lenient or strict"):
        Settings(default_strategy="Strict")
