"""The built-in data-source providers, installed as `protectctl.providers`.

`BUILTIN` is the registry's index of built-in kinds (protectctl/provider.py reads it by name,
so no protectctl module imports a provider): they load without scanning the entry points,
which costs ~50 ms of every agent run. The same kinds are registered as entry points in
pyproject.toml, the way a third-party provider registers.
"""

BUILTIN: dict[str, str] = {
    "filesystem": "protectctl.providers.filesystem:FilesystemProvider",
    "postgresql": "protectctl.providers.postgresql:PostgresqlProvider",
    "mariadb": "protectctl.providers.mariadb:MariadbProvider",
    "systemState": "protectctl.providers.systemstate:SystemStateProvider",
    "vmImage": "protectctl.providers.vmimage:VmImageProvider",
}
