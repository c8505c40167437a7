"""How the apps depend on one another, beyond what import-linter checks (`lint-imports`).

An import inside a function that reaches into another app hides a dependency (and usually a
cycle) from the module's header and from import-linter's contracts: there are none. The
other direction of the core (recovery → messaging, orders, support, analytics) goes through
`recovery.ports`, which those apps plug into at start: every port is plugged and every event
that must be handled has a subscriber.
"""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
from django.core import checks
from django.db import transaction

from recovery import ports
from recovery.domain import events

ROOT = Path(__file__).resolve().parent.parent
APPS = (
    "analytics",
    "common",
    "config",
    "demo",
    "messaging",
    "orders",
    "recovery",
    "stores",
    "subscriptions",
    "support",
)


def _guarded(tree: ast.AST) -> set[int]:
    """Nodes under a `try` that catches ImportError (an optional import) or an
    `if TYPE_CHECKING:` (hints only)."""
    guarded = set()
    for node in ast.walk(tree):
        optional = isinstance(node, ast.Try) and any(
            handler.type is not None and "ImportError" in ast.unparse(handler.type)
            for handler in node.handlers
        )
        if optional or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            guarded.update(id(sub) for sub in ast.walk(node))
    return guarded


def function_local_imports_across_apps(path: Path, root: Path = ROOT) -> list[str]:
    app = path.relative_to(root).parts[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = _guarded(tree)
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in APPS and top != app:
                    found.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    return sorted(set(found))


def _product_files():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def test_no_function_local_import_crosses_apps():
    found = [line for path in _product_files() for line in function_local_imports_across_apps(path)]
    assert found == []


def test_the_scan_sees_a_function_local_import_across_apps(tmp_path):
    """The rule above can fail: a planted import inside a function is found, a guarded one
    and one from the module's own app are not."""
    (tmp_path / "recovery").mkdir()
    planted = tmp_path / "recovery" / "planted.py"
    planted.write_text(
        "def f():\n"
        "    from orders.services import order_payment_lost\n"
        "    from recovery.models import RecoveryCase\n"
        "    try:\n"
        "        import support.models\n"
        "    except ImportError:\n"
        "        pass\n"
        "    try:\n"
        "        from analytics.services import rollups_refresh\n"
        "    finally:\n"
        "        pass\n"
        "    return order_payment_lost, RecoveryCase\n"
    )
    assert function_local_imports_across_apps(planted, root=tmp_path) == [
        "recovery/planted.py:2 imports orders.services",
        "recovery/planted.py:9 imports analytics.services",
    ]


def test_every_port_is_plugged_and_every_event_subscribed():
    assert ports.wiring_problems() == []
    assert [e for e in checks.run_checks() if e.id == "recovery.E001"] == []


def test_an_event_that_must_be_handled_and_has_no_subscriber_raises(monkeypatch):
    monkeypatch.setattr(ports, "_subscribers", {})
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(Exception, match="nothing subscribes to CaseLost"):
        ports.publish(events.CaseLost(case="c1", at=at))
    assert ports.wiring_problems()[0] == "nothing subscribes to CaseClassified"


def test_an_unplugged_port_says_which_app_plugs_it():
    port = ports.Port("example", "orders")
    with pytest.raises(Exception, match=r"'example' is not plugged: the orders app plugs it"):
        port()


@pytest.mark.django_db(transaction=True)
def test_in_transaction_subscribers_run_at_once_and_after_commit_ones_after_it(monkeypatch):
    """Orders' subscribers run in the publisher's transaction; support's after it commits (an
    agent's action locks the queue item, then the case), and never for a rolled-back close."""
    heard = []
    monkeypatch.setattr(ports, "_subscribers", {})
    ports.subscribe(events.CaseLost, lambda e: heard.append(("after", e.case)), on_commit=True)
    ports.subscribe(events.CaseLost, lambda e: heard.append(("now", e.case)))
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with transaction.atomic():
        ports.publish(events.CaseLost(case="c1", at=at))
        assert heard == [("now", "c1")]
    assert heard == [("now", "c1"), ("after", "c1")]

    heard.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        ports.publish(events.CaseLost(case="c2", at=at))
        raise RuntimeError("the close failed")
    assert heard == [("now", "c2")]
