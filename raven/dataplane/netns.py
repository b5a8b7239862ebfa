"""Network-namespace plumbing: make and remove named namespaces, enter one for one thread, or
prefix a command.

Rules kept:
- `entered(name)` switches only the calling thread (setns(2) is per thread) and always switches
  back, so sockets opened inside stay bound to the namespace while the rest of the process is
  untouched;
- `None` means "the namespace we are already in": no switch, no prefix;
- commands run in a namespace through `nsenter --net=...` (no new mount namespace), so a tool
  sees the caller's mounts (e.g. a private /var/run/wireguard);
- a named namespace is a bind mount of an nsfs inode on /var/run/netns/<name> (as `ip netns
  add` makes it); `exists` believes the mount, not the file: an empty file left by a create
  that died half-way is no namespace, and `create` replaces it;
- `create` and `delete` are idempotent (their result says whether they changed anything);
  `create` hands back a namespace with `lo` up, or none at all;
- no pyroute2 exception leaves this module: errors are `DataplaneError`, naming the namespace
  and the fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from raven.dataplane.errors import DataplaneError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")
NAME_MAX = 255
_PRIVILEGE_HINT = ("needs CAP_SYS_ADMIN (a privileged agent container with /var/run/netns "
                   "shared from the host, see docs/tunnel-namespace.md)")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def opened(name: str) -> Iterator[int]:
    """A file descriptor of namespace `name` (for setns(2) or IFLA_NET_NS_FD), closed after."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataplaneError(
            f"network namespace {name!r} does not exist ({path}); create it with "
            f"`ip netns add {name}` or pass the right --netns"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace `name`."""
    if name is None:
        yield
        return
    with opened(name) as target:
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        original = os.open(own, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                hint = _PRIVILEGE_HINT if exc.errno == errno.EPERM else f"({exc.strerror})"
                raise DataplaneError(f"entering network namespace {name!r} {hint}") from None
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(original)


def command_prefix(name: str | None) -> list[str]:
    """argv prefix that runs a program inside network namespace `name`."""
    if name is None:
        return []
    return ["nsenter", f"--net={netns_path(name)}", "--"]


# --- named namespaces: exists, create, delete ---------------------------------------------------

CAP_SYS_ADMIN = 21  # bit of CapEff in /proc/self/status (linux/capability.h)


def privilege_problem(status: Path = Path("/proc/self/status"),
                      run_dir: Path = NETNS_RUN_DIR) -> str | None:
    """Why this process cannot make a named namespace (no CAP_SYS_ADMIN, or a run directory it
    cannot write), or None. Asked before the agent relies on one, so that an agent in a
    container without the privilege keeps the devices in the node's namespace instead of
    failing every apply."""
    try:
        caps = next(line.split()[1] for line in status.read_text().splitlines()
                    if line.startswith("CapEff:"))
    except (OSError, StopIteration, IndexError):
        return f"{status} unreadable: capabilities unknown"
    if not int(caps, 16) >> CAP_SYS_ADMIN & 1:
        return f"no CAP_SYS_ADMIN: making a network namespace {_PRIVILEGE_HINT}"
    # The directory is made on demand (as `ip netns add` does): its nearest existing parent
    # must be writable (access(2) says EROFS for a read-only file system).
    existing = next((d for d in (run_dir, *run_dir.parents) if d.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        return f"{existing} is not writable: a named network namespace is bound under {run_dir}"
    return None


def _checked_path(name: str) -> Path:
    # pyroute2 takes a name with a slash for a path anywhere on the file system: refuse it, as
    # `ip netns add` does, so that a name can only ever mean /var/run/netns/<name>.
    if not name or name in {".", ".."} or "/" in name or "\0" in name or len(name) > NAME_MAX:
        raise DataplaneError(
            f"invalid network namespace name {name!r}: use 1-{NAME_MAX} characters without '/'")
    return netns_path(name)


def _nsfs_device() -> int:
    # Every namespace file (the /proc/<pid>/ns/* links and their bind mounts) lives on nsfs.
    return os.stat("/proc/self/ns/net").st_dev


def inode(name: str) -> int | None:
    """The inode /var/run/netns/<name> names now (None without one): which namespace the name
    stands for, to tell a namespace made again under the same name from the one held open."""
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None


def exists(name: str) -> bool:
    """True when /var/run/netns/<name> holds a mounted namespace (not a stale, empty file)."""
    path = _checked_path(name)
    try:
        return os.stat(path).st_dev == _nsfs_device()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DataplaneError(f"cannot look at network namespace {name!r} ({path}): "
                             f"{exc.strerror}") from None


def _remove_stale_file(path: Path) -> None:
    """Unlink a mount point left without its mount (a create that died half-way)."""
    try:
        if os.stat(path).st_dev != _nsfs_device():
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DataplaneError(f"cannot remove the stale network namespace mount point {path}: "
                             f"{exc.strerror}; remove it by hand") from None


def _create_error(name: str, exc: BaseException) -> DataplaneError:
    code = exc.errno if isinstance(exc, OSError) else None
    if code in {errno.EPERM, errno.EACCES}:
        return DataplaneError(f"creating network namespace {name!r} {_PRIVILEGE_HINT}")
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    return DataplaneError(f"creating network namespace {name!r} ({netns_path(name)}) failed: "
                          f"{reason}")


def _loopback_up(name: str) -> None:
    # flags=0: pyroute2 must never create the namespace on its own (O_CREAT is its default).
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", ifname="lo", state="up")
    except (NetlinkError, OSError, RuntimeError) as exc:
        raise DataplaneError(f"bringing lo up in new network namespace {name!r}: {exc}") from None


def create(name: str) -> bool:
    """Make named namespace `name` with `lo` up; False (and no change) when it exists already.

    pyroute2 makes it the way `ip netns add` does: /var/run/netns made a shared mount, a child
    process unshares a network namespace, which is bind-mounted on /var/run/netns/<name>.
    """
    path = _checked_path(name)
    if exists(name):
        return False
    _remove_stale_file(path)
    try:
        pyroute2_netns.create(name)
    except FileExistsError:
        # Someone made it between our look and the create: it exists, which is all we promise.
        if exists(name):
            return False
        raise DataplaneError(f"creating network namespace {name!r}: {path} appeared as a plain "
                             "file while we created it; another process is creating it") from None
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(DataplaneError):  # the create's error is the one to report
            _remove_stale_file(path)  # pyroute2 leaves its empty mount point behind
        raise _create_error(name, exc) from None
    try:
        _loopback_up(name)
    except DataplaneError:
        # All or nothing: a namespace without lo would pass `exists` for good. The error worth
        # reporting is the first one, so a failed removal does not replace it.
        with contextlib.suppress(DataplaneError):
            delete(name)
        raise
    return True


def delete(name: str) -> bool:
    """Unmount and remove named namespace `name`; False when there was none.

    The namespace itself lives on while a process or an open descriptor still holds it (and the
    devices in it with it); only the name goes. Devices created there go with the namespace,
    devices moved in (VXLAN, TUN, veth) are deleted with it rather than moved back.
    """
    path = _checked_path(name)
    was_namespace = exists(name)
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in {errno.EPERM, errno.EACCES}:
            raise DataplaneError(f"deleting network namespace {name!r} {_PRIVILEGE_HINT}") from None
        raise DataplaneError(f"deleting network namespace {name!r} ({path}) failed: "
                             f"{exc.strerror or exc}") from None
    return was_namespace
