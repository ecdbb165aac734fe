"""Storage backends: named objects in one place (local directory now; sftp and s3 later)."""

from __future__ import annotations
