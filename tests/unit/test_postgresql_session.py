"""A psql that cannot be started is one SessionError naming the server, not a traceback."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from protectctl.providers.postgresql.cluster import Cluster, Session, SessionError


def test_a_missing_psql_is_a_session_error(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    cluster = Cluster(
        data_dir=tmp_path / "data", port=5999, socket_dir=tmp_path, os_user=me, bin_dir=tmp_path / "no-bin"
    )
    with pytest.raises(SessionError) as caught:
        Session(cluster)
    assert "cannot run" in str(caught.value)
    assert str(tmp_path / "no-bin" / "psql") in str(caught.value)
