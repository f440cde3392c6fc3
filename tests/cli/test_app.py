"""`--app module:attribute`: the shipped and repository examples load, bad specs say why."""

from __future__ import annotations

import pytest

from flows_cli._app import load_app
from flows_cli._open import CliError


@pytest.mark.parametrize(
    ("spec", "workflow"),
    [
        ("flows_cli.examples.order:definitions", "order-workflow"),
        ("examples.loan_app.workflow:definitions", "loan-application"),
    ],
)
def test_examples_export_definitions(spec: str, workflow: str) -> None:
    app = load_app(spec)
    assert [wf.name for wf in app.workflows] == [workflow]
    assert app.activities
    assert app.workflow(workflow, 1).name == workflow


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flows_cli.examples.order", "--app must look like module:attribute"),
        ("no_such_module_here:defs", "cannot import 'no_such_module_here'"),
        ("flows_cli.examples.order:nothing", "has no attribute 'nothing'"),
        ("flows_cli.examples.order:OrderIn", "must give workflows and activities"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        load_app(spec)


def test_unknown_version_names_what_the_app_has() -> None:
    app = load_app("flows_cli.examples.order:definitions")
    expected = r"has no workflow 'order-workflow' v2 \(it has order-workflow v1\)"
    with pytest.raises(CliError, match=expected):
        app.workflow("order-workflow", 2)
