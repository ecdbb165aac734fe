"""The backup engine: a content-addressed, encrypted, deduplicating repository library.

This package owns the repository format (config, keys, packs, index, points, locks), the
storage backends and the repository-level operations (write, read, gc, check). It imports
neither `protectctl.policy` nor `protectctl.plan`, and never prints: long work reports to
the `Progress` protocol. Import the submodules you need (`engine.repository`,
`engine.tree`, `engine.storage.local`); nothing heavy is re-exported here so importing
`protectctl.engine` stays cheap.
"""

from __future__ import annotations
