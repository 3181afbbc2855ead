"""The cluster tier's fixtures (CRD, jobs helper, a second namespace, report hook) for the chart's tests."""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401 - re-exported as fixtures
    crd,
    jobs,
    other_namespace,
    pytest_runtest_makereport,
)
