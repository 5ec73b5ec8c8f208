"""The fault suite's quick run: part of the system-level suite (scripts/test-system)."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.system)
