"""A control machine installed without an extra says which one a feature needs, in one line."""

from __future__ import annotations

import sys

import pytest

from protectctl.engine.storage.s3 import S3Location, make_client
from protectctl.errors import ProtectctlError, StateError
from protectctl.state.postgres import PostgresStateBackend


def test_an_s3_storage_without_the_s3_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore", None)  # `import botocore...` raises ImportError
    with pytest.raises(ProtectctlError, match="needs the S3 client libraries") as err:
        make_client(S3Location("bucket"), None)
    assert err.value.hint is not None and "pip install 'protectctl[s3]'" in err.value.hint


def test_the_postgres_state_backend_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StateError, match="needs psycopg") as err:
        PostgresStateBackend("postgresql:///nowhere")._connect()
    assert err.value.hint is not None and "pip install 'protectctl[postgres-state]'" in err.value.hint
