from __future__ import annotations

import os

import pytest

from tests.cdk_helpers import SynthesizedApp, synthesize


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and no metadata probing: no test may reach a real AWS account."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def default_app() -> SynthesizedApp:
    """The default configuration, synthesized once for every template test."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return synthesize()
