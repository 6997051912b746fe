"""``canaryws contract asyncapi``: the AsyncAPI 3.0 document of contract v1, generated from the
wire types (:mod:`canaryws.core.asyncapi`), as YAML.

The repository keeps it in ``docs/asyncapi.yaml``; ``--check`` fails (exit 1, with a unified
diff) when that file is not what the code generates, so the document cannot drift from the code.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click
import yaml

from canaryws.core.asyncapi import document

HEADER = (
    "# Generated from canaryws.core.contract by `canaryws contract asyncapi --output docs/asyncapi.yaml`;\n"
    "# do not edit by hand. docs/contract.md is the prose explanation.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Markdown tables of the descriptions) as literal blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def render() -> str:
    """The document as the repository keeps it: YAML, in the generator's key order."""
    body = yaml.dump(document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110,
                     default_flow_style=False)
    return HEADER + body


@click.group("contract")
def contract_group() -> None:
    """The contract in machine-readable form."""


@contract_group.command("asyncapi")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the document to PATH (default: standard output).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 with a diff when the document at --output differs from the generated one.",
)
def asyncapi(output: Path | None, check: bool) -> None:
    """The AsyncAPI 3.0 document of contract v1, generated from the code, as YAML."""
    text = render()
    if check:
        if output is None:
            raise click.UsageError("--check compares the file given with --output")
        try:
            committed = output.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot read {output}: {exc.strerror or exc}") from None
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=str(output), tofile="generated",
            )
            click.echo("".join(diff), err=True, nl=False)
            raise click.ClickException(
                f"{output} is not what the code generates; run: canaryws contract asyncapi --output {output}"
            )
        click.echo(f"{output} is up to date", err=True)
        return
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}", err=True)
