"""The public surface of flows_ui."""

import flows_ui


def test_exported_names() -> None:
    assert sorted(flows_ui.__all__) == [
        "UIConfig",
        "app_config",
        "build_server",
        "check_bind",
        "create_app",
        "is_loopback",
        "serve",
        "serve_async",
    ]
    for name in flows_ui.__all__:
        assert getattr(flows_ui, name).__doc__, name
