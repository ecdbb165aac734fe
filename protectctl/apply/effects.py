"""What applying a change does, per resource kind.

Each kind has create/update/delete acting on the change's inputs alone (plus the outputs
recorded in the state for that resource). A replace is delete-old then create-new, where
deleting never removes protected data unless the plan says `delete_data`.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from protectctl.errors import ProtectctlError, RepositoryError
from protectctl.provision.config import render_agent_config, render_source_config
from protectctl.provision.host import HostConnection, LocalHost, connect, digest
from protectctl.secret import SecretRef

if TYPE_CHECKING:
    from protectctl.state.model import ResourceState

Inputs = Mapping[str, Any]
Outputs = dict[str, Any]


@dataclass(slots=True)
class ApplyContext:
    """What effects may use: host connections and a place to say things to the user."""

    hosts: Mapping[str, Mapping[str, Any]]  # host name → host inputs (address, root, ...)
    warn: Callable[[str], None]
    # host → (why its schedules do not run, units written there that nothing enables)
    inactive: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    _connections: dict[str, HostConnection] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note_inactive(self, host: str, unit: str, reason: str) -> None:
        """A schedule was written on `host` but will not run: said once per host in apply's summary."""
        with self._lock:
            self.inactive.setdefault(host, (reason, []))[1].append(unit)

    def host(self, name: str) -> HostConnection:
        # one connection per host, shared by the walk's threads (an SshHost is thread-safe)
        with self._lock:
            if name not in self._connections:
                inputs = self.hosts.get(name, {})
                self._connections[name] = connect(name, str(inputs.get("address", "local")), inputs, self.hosts)
            return self._connections[name]


class Effect(Protocol):
    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs: ...
    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs: ...
    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None: ...


def secret_ref(ref: Mapping[str, Any]) -> SecretRef:
    return SecretRef(env=ref.get("env"), file=Path(ref["file"]) if ref.get("file") else None)


class KeyEffect:
    """An EncryptionKey: makes sure its passphrase exists; generates a file one if asked."""

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        ref = inputs["passphrase"]
        if ref.get("file") and not Path(ref["file"]).exists():
            if not inputs.get("generate", True):
                raise ProtectctlError(
                    f"passphrase file {ref['file']} does not exist",
                    hint="create it (mode 0600) or set `generate: true`",
                )
            path = Path(ref["file"])
            passphrase = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(passphrase + b"\n")
                out.flush()
                os.fsync(out.fileno())
            ctx.warn(
                f"generated a new passphrase in {path} (mode 0600): keep a copy somewhere safe; "
                "without it the repository cannot be read"
            )
            return {"generated": True}
        secret_ref(ref).resolve()  # fail now, clearly, if the env var or file is missing
        return {"generated": False}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return {**outputs, **self.create(inputs, ctx)}

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        ref = inputs["passphrase"]
        if delete_data and outputs.get("generated") and ref.get("file"):
            Path(ref["file"]).unlink(missing_ok=True)


class StorageEffect:
    """A repository: initialised with a master key wrapped by the key's passphrase."""

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        from protectctl.engine.repository import Repository
        from protectctl.engine.storage.factory import open_storage

        passphrase = secret_ref(inputs["passphrase"]).resolve().value
        # full rights: the control machine's credentials (sftp: the backup Host's; s3: `credentials`)
        storage: Any = open_storage(inputs)
        if inputs["type"] == "s3":
            from protectctl.engine.storage.factory import prepare_bucket

            prepare_bucket(storage)
        if Repository.exists(storage):
            repo = Repository.open(storage, passphrase)
            return {"repository_id": repo.id, "initialised": False}
        repo = Repository.init(storage, passphrase)
        return {"repository_id": repo.id, "initialised": True}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return {**outputs, **self.create(inputs, ctx), "initialised": outputs.get("initialised", False)}

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        if not delete_data:
            ctx.warn(f"storage at {inputs['path']} is no longer managed; its data is kept")
            return
        if inputs["type"] == "s3":
            from protectctl.engine.storage.factory import delete_repository, open_storage

            delete_repository(open_storage(inputs))
            return
        if inputs["type"] == "sftp":
            conn = ctx.host(str(inputs["host"]))
            if conn.read_file(f"{inputs['path']}/config/config") is None:
                return
            conn.remove_tree(str(inputs["path"]))
            return
        path = Path(inputs["path"])
        if not (path / "config").exists():
            if path.exists():
                raise RepositoryError(f"{path} does not look like a protectctl repository; not deleting it")
            return
        shutil.rmtree(path)


class LibraryEffect:
    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        if inputs["type"] == "virtual":
            Path(inputs["path"]).mkdir(parents=True, exist_ok=True)
        return {}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return self.create(inputs, ctx)

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        if delete_data and inputs["type"] == "virtual":
            shutil.rmtree(inputs["path"], ignore_errors=True)


class HostEffect:
    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        ctx.host(inputs_host(inputs)).make_dirs(inputs["root"])
        return {}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return self.create(inputs, ctx)

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        return None  # the root may hold anything; apply never made it exclusively


def inputs_host(inputs: Inputs) -> str:
    return str(inputs.get("host") or inputs.get("name") or "local")


class FilesEffect:
    """A resource that is a set of files on a host; outputs record each file's digest."""

    mode = 0o600

    def files(self, inputs: Inputs) -> dict[str, bytes]:
        raise NotImplementedError

    def host_name(self, inputs: Inputs) -> str:
        return str(inputs["host"])

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        conn = ctx.host(self.host_name(inputs))
        written: dict[str, str] = {}
        for path, data in self.files(inputs).items():
            conn.write_file(path, data, mode=self.mode)
            written[path] = digest(data)
        self.after_write(inputs, ctx)
        return {"files": written}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        new = self.create(inputs, ctx)
        for stale in set(outputs.get("files", {})) - set(new["files"]):
            ctx.host(self.host_name(inputs)).remove_file(stale)
        return new

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        conn = ctx.host(self.host_name(inputs))
        self.before_remove(inputs, ctx)
        for path in outputs.get("files", {}):
            conn.remove_file(path)
            conn.remove_empty_dirs(str(PurePosixPath(path).parent), str(inputs["root"]))

    def after_write(self, inputs: Inputs, ctx: ApplyContext) -> None:
        return None

    def before_remove(self, inputs: Inputs, ctx: ApplyContext) -> None:
        return None


class AgentEffect(FilesEffect):
    """The agent's config; on SSH hosts also its venv (provision/agent_install.py)."""

    def files(self, inputs: Inputs) -> dict[str, bytes]:
        return {inputs["config_path"]: render_agent_config(inputs).encode()}

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        installed = None
        if inputs.get("install"):
            from protectctl.provision.agent_install import install

            installed = install(
                ctx.host(self.host_name(inputs)),
                inputs["install"]["venv"],
                digest=inputs["install"]["digest"],
                extras=inputs["install"].get("extras", ()),
            )
        outputs = super().create(inputs, ctx)
        if installed is not None:
            outputs["install"] = installed
        return outputs

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        super().delete(inputs, outputs, ctx, delete_data=delete_data)
        if inputs.get("install") and outputs.get("install"):
            from protectctl.provision.agent_install import uninstall

            uninstall(ctx.host(self.host_name(inputs)), inputs["install"]["venv"])

    def after_write(self, inputs: Inputs, ctx: ApplyContext) -> None:
        conn = ctx.host(self.host_name(inputs))
        conn.make_dirs(inputs["state_dir"], mode=0o700)
        if inputs.get("metrics_path"):
            _metrics_dir(
                conn,
                str(PurePosixPath(inputs["metrics_path"]).parent),
                str(inputs["metrics_group"]),
                self.host_name(inputs),
                ctx,
            )


def _metrics_dir(conn: HostConnection, path: str, group: str, host: str, ctx: ApplyContext) -> None:
    """The directory of the metrics textfile, readable by node_exporter's group.

    A directory apply creates is root:GROUP 2750: setgid, so the file the agent writes there
    (0640) belongs to GROUP without the agent needing CAP_CHOWN inside its sandbox. An existing
    directory (a package's) is left as it is, but gets the setgid bit when its group is GROUP."""
    existed = conn.run(("test", "-d", path)).status == 0
    conn.make_dirs(path, mode=0o750)
    if conn.run(("getent", "group", group)).status != 0:
        ctx.warn(
            f"host {host}: group {group!r} does not exist, so node_exporter cannot read {path}; "
            "set the Host's metrics.group to the group node_exporter runs as"
        )
        return
    if existed and conn.run(("stat", "-c", "%G", path)).stdout.strip() != group:
        ctx.warn(
            f"host {host}: {path} exists and does not belong to group {group!r}; the metrics file in it "
            f"is 0640 root:root unless you run `chgrp {group} {path} && chmod g+s {path}`"
        )
        return
    for argv in (("chgrp", group, path), ("chmod", "2750" if not existed else "g+s", path)):
        result = conn.run(argv)
        if result.status != 0:
            raise ProtectctlError(f"host {host}: {' '.join(argv)} failed: {result.stderr.strip()[-300:]}")


class SourceEffect(FilesEffect):
    def files(self, inputs: Inputs) -> dict[str, bytes]:
        return {inputs["config_path"]: render_source_config(inputs).encode()}

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        first, *others = source_nodes(inputs)
        outputs = super().create(first, ctx)
        prepared = prepare_source(first, ctx)
        for node in others:  # a primary/standby pair: every host gets its config and is prepared
            outputs.setdefault("node_files", {})[node["host"]] = super().create(node, ctx)["files"]
            prepared += [f"{node['host']}: {change}" for change in prepare_source(node, ctx)]
        if prepared:
            outputs["prepared"] = prepared
        return outputs

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        # the host root is not in a source's inputs; stop removing empty dirs at the sources dir
        conn = ctx.host(self.host_name(inputs))
        for path in outputs.get("files", {}):
            conn.remove_file(path)
        for host, files in outputs.get("node_files", {}).items():
            for path in files:
                ctx.host(host).remove_file(path)


def source_nodes(inputs: Inputs) -> list[dict[str, Any]]:
    """A source's inputs per host: itself, or for a pair (`nodes`) one per host, whose spec names its node."""
    nodes = inputs.get("nodes")
    if not nodes:
        return [dict(inputs)]
    return [
        {**inputs, "host": n["host"], "config_path": n["config_path"], "spec": {**inputs["spec"], "node": n["host"]}}
        for n in nodes
    ]


def prepare_source(inputs: Inputs, ctx: ApplyContext) -> list[str]:
    """Let a provider that needs it prepare the host (e.g. PostgreSQL WAL archiving); returns its changes."""
    from protectctl.plan.resources import STATE_DIR, host_path
    from protectctl.provider import HostPreparer, PrepareRequest, load_provider

    provider = load_provider(str(inputs["provider"]))
    if not isinstance(provider, HostPreparer):
        return []
    host = ctx.hosts.get(str(inputs["host"]), {})
    root = str(host.get("root", "/"))
    if str(host.get("address", "local")) != "local":
        return _prepare_remote(inputs, ctx, root)
    outcome = provider.prepare_host(
        PrepareRequest(str(inputs["source"]), dict(inputs["spec"]), Path(host_path(root, STATE_DIR)))
    )
    for warning in outcome.warnings:
        ctx.warn(warning)
    return list(outcome.changes)


def _prepare_remote(inputs: Inputs, ctx: ApplyContext, root: str) -> list[str]:
    """Prepare an SSH host through its agent (`agent prepare`), which reads the source config
    apply has just written there and acts on that host's own PostgreSQL."""
    import json

    from protectctl.errors import RemoteError
    from protectctl.plan.resources import agent_command

    conn = ctx.host(str(inputs["host"]))
    argv = agent_command(root, "agent", "prepare", str(inputs["config_path"]))
    result = conn.run(argv, timeout_s=600)
    try:
        outcome = json.loads(result.stdout)
    except ValueError:
        outcome = None
    if result.status != 0 or not isinstance(outcome, dict):
        said = (result.stderr or result.stdout).strip().splitlines()
        raise RemoteError(
            f"host {inputs['host']}: preparing {inputs['source']} failed: "
            f"{' '.join(said[-3:]) or f'exit {result.status}'}"
        )
    for warning in outcome.get("warnings", []):
        ctx.warn(f"host {inputs['host']}: {warning}")
    return [str(c) for c in outcome.get("changes", [])]


class ScheduleEffect(FilesEffect):
    """systemd units or a cron file; enabled where systemd runs the real root."""

    mode = 0o644

    def files(self, inputs: Inputs) -> dict[str, bytes]:
        return {path: text.encode() for path, text in schedule_files(inputs).items()}

    def _systemd_live(self, inputs: Inputs, ctx: ApplyContext) -> bool:
        if inputs["scheduler"] != "systemd" or inputs["root"] != "/":
            return False
        conn = ctx.host(inputs["host"])
        if isinstance(conn, LocalHost):
            return Path("/run/systemd/system").is_dir() and conn.has_command("systemctl")
        # on an SSH host: systemd runs there when /run/systemd/system exists (sd_booted)
        return conn.run(("test", "-d", "/run/systemd/system")).status == 0 and conn.has_command("systemctl")

    def after_write(self, inputs: Inputs, ctx: ApplyContext) -> None:
        host, unit = str(inputs["host"]), unit_of(inputs)
        if inputs["root"] != "/":
            ctx.note_inactive(
                host,
                unit,
                f"its root is {inputs['root']}, not /: {inputs['scheduler']} reads "
                "only the real /etc, so these files are never run",
            )
            return
        if inputs["scheduler"] != "systemd":
            return  # cron reads /etc/cron.d by itself
        if not self._systemd_live(inputs, ctx):
            ctx.note_inactive(
                host,
                unit,
                "systemd is not running there; run `systemctl daemon-reload && "
                "systemctl enable --now UNIT` for each, once it is",
            )
            return
        conn = ctx.host(host)
        for argv in (("systemctl", "daemon-reload"), ("systemctl", "enable", "--now", unit)):
            result = conn.run(argv)
            if result.status != 0:
                raise ProtectctlError(f"{' '.join(argv)} failed: {result.stderr.strip()[-300:]}")

    def before_remove(self, inputs: Inputs, ctx: ApplyContext) -> None:
        if self._systemd_live(inputs, ctx):
            ctx.host(inputs["host"]).run(("systemctl", "disable", "--now", unit_of(inputs)))


_authorized_keys_locks: dict[str, threading.Lock] = {}
_authorized_keys_guard = threading.Lock()


def _authorized_keys_lock(host: str) -> threading.Lock:
    # agents on many hosts add their keys to one backup server's file in parallel
    with _authorized_keys_guard:
        return _authorized_keys_locks.setdefault(host, threading.Lock())


class AccessEffect:
    """An agent's own SSH key for an sftp storage, authorised on the backup server only as
    `restrict,command="… serve --append-only --repo PATH"` (docs/fleet.md)."""

    def _tag(self, inputs: Inputs) -> str:
        return f"protectctl-agent:{inputs['storage']}/{inputs['host']}"

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        from protectctl.provision.keys import authorized_line, new_key_pair, public_key_of, tunnel_line

        conn = ctx.host(str(inputs["host"]))
        key_path = str(inputs["key_path"])
        private = conn.read_file(key_path)
        if private is None:
            private, public = new_key_pair(self._tag(inputs))
            conn.make_dirs(str(PurePosixPath(key_path).parent), mode=0o700)
            conn.write_file(key_path, private, mode=0o600)
        else:
            public = public_key_of(private, self._tag(inputs))
        conn.write_file(key_path + ".pub", public.encode() + b"\n", mode=0o644)
        if inputs.get("known_hosts_copy"):
            conn.write_file(str(inputs["known_hosts_copy"]), _known_hosts_entries(inputs["known_hosts"]), mode=0o644)
        for hop in inputs.get("jump", []):
            self._edit_authorized_on(
                str(hop["host"]),
                str(hop["authorized_keys"]),
                self._tag(inputs),
                tunnel_line(public, str(hop["permit"])),
                ctx,
            )
        line = authorized_line(public, str(inputs["serve"]), str(inputs["repo"]))
        self._edit_authorized(inputs, ctx, line)
        return {"public_key": public, "authorized_keys": inputs["authorized_keys"]}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return self.create(inputs, ctx)

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        self._edit_authorized(inputs, ctx, None)
        for hop in inputs.get("jump", []):
            self._edit_authorized_on(str(hop["host"]), str(hop["authorized_keys"]), self._tag(inputs), None, ctx)
        conn = ctx.host(str(inputs["host"]))
        conn.remove_file(str(inputs["key_path"]))
        conn.remove_file(str(inputs["key_path"]) + ".pub")
        if inputs.get("known_hosts_copy"):
            conn.remove_file(str(inputs["known_hosts_copy"]))

    def _edit_authorized(self, inputs: Inputs, ctx: ApplyContext, line: str | None) -> None:
        self._edit_authorized_on(
            str(inputs["backup_host"]), str(inputs["authorized_keys"]), self._tag(inputs), line, ctx
        )

    @staticmethod
    def _edit_authorized_on(host: str, path: str, tag: str, line: str | None, ctx: ApplyContext) -> None:
        """Replace (or with None remove) the line tagged `tag` in `host`'s authorized_keys."""
        backup = ctx.host(host)
        with _authorized_keys_lock(host):
            old = (backup.read_file(path) or b"").decode()
            kept = [entry for entry in old.splitlines() if not entry.rstrip().endswith(" " + tag)]
            if line is not None:
                kept.append(line)
            new = "".join(f"{entry}\n" for entry in kept)
            if new != old:
                backup.write_file(path, new.encode(), mode=0o600)


class SecretEffect:
    """A key's passphrase copied to an SSH host, so that its agent can open the repository:
    root-only (0600 in a 0700 directory); nothing about the value is recorded."""

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        value = secret_ref(inputs["passphrase"]).resolve().value
        conn = ctx.host(str(inputs["host"]))
        path = str(inputs["path"])
        conn.make_dirs(str(PurePosixPath(path).parent), mode=0o700)
        if conn.read_file(path) != value + b"\n":
            conn.write_file(path, value + b"\n", mode=0o600)
        return {"secret_files": [path]}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        new = self.create(inputs, ctx)
        for stale in set(outputs.get("secret_files", [])) - set(new["secret_files"]):
            ctx.host(str(inputs["host"])).remove_file(stale)
        return new

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        conn = ctx.host(str(inputs["host"]))
        for path in outputs.get("secret_files", []):
            conn.remove_file(path)
            conn.remove_empty_dirs(str(PurePosixPath(path).parent), str(inputs["root"]))


def secret_drift(conn: HostConnection, rec: ResourceState) -> list[str]:
    """What differs between the passphrase copies on a host and their source on this machine;
    the values are compared here in constant time and never shown."""
    import hmac

    problems = []
    for path in rec.outputs.get("secret_files", []):
        data = conn.read_file(path)
        if data is None:
            problems.append(f"{path} is missing")
            continue
        try:
            want = secret_ref(rec.inputs["passphrase"]).resolve().value
        except ProtectctlError:
            continue  # not readable here (e.g. env not set for a refresh): existence is all we can check
        if not hmac.compare_digest(data.rstrip(b"\r\n"), want):
            problems.append(f"{path} no longer holds the passphrase of key {rec.inputs['key']}")
    return problems


def _known_hosts_entries(wanted: Any) -> bytes:
    """The knownHosts lines an agent needs, read from the control machine's files."""
    from protectctl.provision.ssh import known_host_keys

    lines: list[str] = []
    for entry in wanted:
        name = str(entry["name"])
        keys = known_host_keys(str(entry["file"]), name, host=name)
        if not keys:
            raise ProtectctlError(
                f"knownHosts {entry['file']} has no key for {name}",
                hint=f"add `{name} <key type> <key>` to it, or pin `hostKey:` instead",
            )
        lines += [f"{name} {key}" for key in keys]
    return "".join(f"{line}\n" for line in lines).encode()


class LogicalEffect:
    """A resource that exists only in the state (a protection group)."""

    def create(self, inputs: Inputs, ctx: ApplyContext) -> Outputs:
        return {}

    def update(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext) -> Outputs:
        return {}

    def delete(self, inputs: Inputs, outputs: Outputs, ctx: ApplyContext, *, delete_data: bool) -> None:
        return None


def unit_of(inputs: Inputs) -> str:
    """The systemd unit apply enables: the timer of a schedule, the service of a daemon (`daemon: true`)."""
    return f"{inputs['name']}.{'service' if inputs.get('daemon') else 'timer'}"


def schedule_files(inputs: Inputs) -> dict[str, str]:
    """The rendered schedule files of a schedule resource, by absolute path on the host."""
    from protectctl.provision.schedulers.base import DaemonJob, Sandbox, ScheduledJob
    from protectctl.provision.schedulers.registry import render_daemon, renderer_for
    from protectctl.units import Schedule

    if inputs.get("daemon"):  # a long-running service (e.g. WAL streaming), not a timer
        files = render_daemon(
            inputs["scheduler"], DaemonJob(inputs["name"], inputs["description"], tuple(inputs["argv"]))
        )
        return {str(PurePosixPath(inputs["root"]) / rel): text for rel, text in files.items()}
    box = inputs.get("sandbox")
    sandbox = (
        None
        if box is None
        else Sandbox(
            write_paths=None if box["write_paths"] is None else tuple(box["write_paths"]),
            capabilities=None if box["capabilities"] is None else tuple(box["capabilities"]),
            filter_syscalls=bool(box["filter_syscalls"]),
            change_user=bool(box["change_user"]),
            devices=bool(box["devices"]),
        )
    )
    job = ScheduledJob(
        name=inputs["name"],
        description=inputs["description"],
        argv=tuple(inputs["argv"]),
        schedule=Schedule.parse(inputs["schedule"]),
        randomized_delay_s=int(inputs["randomized_delay_s"]),
        timeout_s=int(inputs.get("timeout_s", 0)),
        sandbox=sandbox,
        on_failure=inputs.get("on_failure"),
        mailto=inputs.get("mailto"),
        ac_power=bool(inputs.get("ac_power")),
        inhibit=bool(inputs.get("inhibit")),
    )
    rendered = renderer_for(inputs["scheduler"]).render(job)
    root = PurePosixPath(inputs["root"])
    return {str(root / rel): text for rel, text in rendered.items()}


EFFECTS: dict[str, Effect] = {
    "key": KeyEffect(),
    "storage": StorageEffect(),
    "library": LibraryEffect(),
    "host": HostEffect(),
    "agent": AgentEffect(),
    "group": LogicalEffect(),
    "source": SourceEffect(),
    "schedule": ScheduleEffect(),
    "access": AccessEffect(),
    "secret": SecretEffect(),
}
