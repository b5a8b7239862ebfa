"""Run a Python driver script inside a real Linux kernel: a qemu VM booted by virtme-ng.

Why a VM: this machine's kernel has no WireGuard module, so the kernel backend can only be
proven live in another kernel. virtme-ng boots Debian's kernel (`linux-image-amd64`, installed
by scripts/setup.sh) with this machine's filesystem mounted read-only over 9p; the guest runs
our code from this checkout and the tools (`ip`, `wg`, `setpriv`) of the host.

Why the bundle: under software emulation (TCG; KVM does not work on these machines, see
docs/dataplane.md) every file lookup over 9p and every interpreted instruction is slow, and
importing the data plane from the shared tree took about two minutes. So the host imports
what the driver needs and writes it as compiled bytecode into one zip archive; the guest puts
that archive first on sys.path and starts Python with -S (no site scan): one file read instead
of thousands of 9p lookups. Modules not in the bundle still load from the filesystem.

Protocol: the driver prints one line `RAVEN-VM <json object>` per result and `RAVEN-VM-DONE`
at the end; `run_driver` returns them merged (a crash leaves the results printed before it).

Also a script: `python vmrun.py bundle OUT.zip MODULE...` (used by `build_bundle`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARK = "RAVEN-VM "
DONE = "RAVEN-VM-DONE"


def kernel_has_wireguard(version: str) -> bool:
    moddir = Path("/lib/modules") / version
    if any((moddir / "kernel/drivers/net/wireguard").glob("wireguard.ko*")):
        return True
    builtin = moddir / "modules.builtin"
    return builtin.exists() and "wireguard" in builtin.read_text()


def find_kernel() -> Path | None:
    """The newest installed /boot/vmlinuz-* whose modules include WireGuard."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if os.access(image, os.R_OK) and kernel_has_wireguard(version):
            found.append(image)
    return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)], default=None)


def vng_path() -> Path | None:
    # setup.sh installs virtme-ng into the project's .venv (extra "vm"); vng runs virtme-run
    # from the same bin directory, which therefore goes on PATH.
    local = Path(sys.executable).parent / "vng"
    if local.exists():
        return local
    found = shutil.which("vng")
    return Path(found) if found else None


def unavailable() -> str | None:
    """Why VM tests cannot run here (None: they can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (apt qemu-system-x86)")
    if find_kernel() is None:
        missing.append("a /boot/vmlinuz-* with the wireguard module (apt linux-image-amd64)")
    if vng_path() is None:
        missing.append("vng (pip virtme-ng, the project's 'vm' extra)")
    if shutil.which("busybox") is None:
        missing.append("busybox (apt busybox-static)")
    if not missing:
        return None
    return f"VM tests need {', '.join(missing)}: run scripts/setup.sh"


# --- the bundle -----------------------------------------------------------------------------


def _write_bundle(out: Path, modules: Sequence[str]) -> int:
    """Import `modules`, then store every pure-Python module now loaded as bytecode in `out`.

    A top-level package with an extension module anywhere in it (e.g. cryptography) is left
    out: its package __path__ would point into the zip, where the .so cannot be loaded."""
    from importlib._bootstrap_external import (  # type: ignore[attr-defined]
        _code_to_timestamp_pyc,
    )

    for name in modules:
        importlib.import_module(name)
    loaded = dict(sys.modules)
    native = {name.partition(".")[0] for name, mod in loaded.items()
              if "." in name and getattr(getattr(mod, "__spec__", None), "origin", "")
              and str(mod.__spec__.origin).endswith(".so")}
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, mod in sorted(loaded.items()):
            spec = getattr(mod, "__spec__", None)
            origin = getattr(spec, "origin", None)
            if (name == "__main__" or spec is None or not origin or not origin.endswith(".py")
                    or name.partition(".")[0] in native or not os.path.exists(origin)):
                continue
            package = spec.submodule_search_locations is not None
            if package and not origin.endswith("__init__.py"):
                continue
            source = Path(origin).read_bytes()
            code = compile(source, origin, "exec", dont_inherit=True)
            arcname = name.replace(".", "/") + ("/__init__.pyc" if package else ".pyc")
            archive.writestr(arcname, bytes(_code_to_timestamp_pyc(code, 0, 0)))
            count += 1
    return count


def build_bundle(out: Path, modules: Sequence[str]) -> Path:
    """The bundle of `modules` and everything they import, built in a fresh interpreter."""
    subprocess.run([sys.executable, __file__, "bundle", str(out), *modules], check=True,
                   cwd=ROOT, capture_output=True, text=True)
    return out


def guest_python(bundle: Path | None, script: Path, *args: str) -> str:
    """Shell command that runs `script` in the guest with the bundle first on sys.path."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    # Two timestamps (guest uptime) for the boot figures: the shell reached, Python started.
    uptime = "open('/proc/uptime').read().split()[0]"
    boot = ("import sys, runpy; "
            f"print('{MARK}{{\"python_uptime_s\": ' + {uptime} + '}}', flush=True); "
            f"sys.path[:0] = {[str(bundle)] if bundle else []!r} + "
            f"[{str(script.parent)!r}, {str(ROOT)!r}]; "
            f"sys.path += {site!r}; "
            f"sys.argv = {[str(script), *args]!r}; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    shell = (f"printf '{MARK}{{\"shell_uptime_s\": %s}}\\n' \"$(cut -d' ' -f1 /proc/uptime)\"; "
             "exec ")
    return shell + shlex.join([sys.executable, "-S", "-E", "-B", "-c", boot])


# --- running ----------------------------------------------------------------------------------


@dataclass
class VmRun:
    returncode: int
    seconds: float  # wall clock from starting vng to its exit (boot + driver + shutdown)
    output: str
    results: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def explain(self) -> str:
        tail = "\n".join(self.output.splitlines()[-60:])
        return f"vng exit {self.returncode} after {self.seconds:.0f}s; output tail:\n{tail}"


def run_in_vm(guest_command: str, *, timeout: float = 1200, memory: str = "1G",
              cpus: int = 2) -> VmRun:
    kernel, vng = find_kernel(), vng_path()
    if kernel is None or vng is None:
        raise RuntimeError(unavailable() or "no kernel or vng")
    argv = [str(vng), "--run", str(kernel), "--user", "root", "--memory", memory,
            "--cpus", str(cpus), "--cwd", str(ROOT)]
    if os.environ.get("RAVEN_VM_KVM") != "1":
        # qemu on /dev/kvm fails on these machines (MSR 0x10a) or hangs; TCG always works.
        argv.append("--disable-kvm")
    argv += ["--", guest_command]
    env = {**os.environ, "PATH": f"{vng.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    started = time.monotonic()
    # stdin must not be a terminal or pytest's capture: vng would attach the guest console to
    # it. Own session: on a timeout the whole group (vng, virtme-run, qemu) is killed.
    # Output goes to files, not pipes: what the guest printed survives a kill on timeout.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                text=True, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            killed = ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = f"\n[vmrun] killed after {timeout:.0f}s"
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read() + killed
    run = VmRun(proc.returncode, time.monotonic() - started, stdout + stderr)
    for line in stdout.splitlines():
        line = line.strip("\r")
        if line.startswith(MARK):
            run.results.update(json.loads(line[len(MARK):]))
        elif line == DONE:
            run.done = True
    return run


def emit(**results: Any) -> None:
    """Driver side: report results (one line, flushed, so a later crash keeps them)."""
    print(MARK + json.dumps(results, sort_keys=True), flush=True)


def finish() -> None:
    print(DONE, flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "bundle":
        sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
        n = _write_bundle(Path(sys.argv[2]), sys.argv[3:])
        print(f"{n} modules")
    else:
        sys.exit("usage: vmrun.py bundle OUT.zip MODULE...")
