"""Browsing recovery points: ls, cat, versions, diff, find over a point's tree, and a read-only
FUSE mount (`mount`). Reads the repository only; never needs the state (docs/browsing.md)."""
