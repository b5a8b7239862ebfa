"""A bundle of compiled modules, so Python programs start fast inside a lab VM (raven.lab.vm).

Under software emulation every file lookup over 9p and every interpreted instruction is slow:
importing the agent from the shared tree takes minutes. The host imports what a program needs
in a fresh interpreter and writes every pure-Python module then loaded, as bytecode, into one
zip archive; the guest puts that archive first on sys.path and starts Python with -S (no site
scan). Modules not in the bundle (packages with native extensions, modules imported later)
still load from the filesystem through the normal path, which the bootstrap appends.

Also a script: `python vmbundle.py OUT.zip MODULE...` (run by `build` in a fresh interpreter).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout (editable install) or site-packages


def _write(out: Path, modules: Sequence[str]) -> int:
    from importlib._bootstrap_external import (  # type: ignore[attr-defined]
        _code_to_timestamp_pyc,
    )

    for name in modules:
        if name.endswith(".*"):  # every module of a package (lazily imported ones too)
            import pkgutil

            package = importlib.import_module(name[:-2])
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        else:
            importlib.import_module(name)
    loaded = dict(sys.modules)
    # A top-level package with an extension module is left out: its __path__ would point into
    # the zip, where the .so cannot be loaded.
    native = {name.partition(".")[0] for name, mod in loaded.items()
              if str(getattr(getattr(mod, "__spec__", None), "origin", "") or "").endswith(".so")}
    # So is a package that keeps data next to its code (certifi's cacert.pem, raven.lab's
    # topologies), with everything under it: that data is read from the package's folder.
    data = {name for name, mod in loaded.items() if _has_data(mod)}
    count = 0
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, mod in sorted(loaded.items()):
            spec = getattr(mod, "__spec__", None)
            origin = getattr(spec, "origin", None)
            if (name == "__main__" or spec is None or not origin or not origin.endswith(".py")
                    or name.partition(".")[0] in native or not os.path.exists(origin)
                    or any(name == d or name.startswith(d + ".") for d in data)):
                continue
            package = spec.submodule_search_locations is not None
            if package and not origin.endswith("__init__.py"):
                continue
            code = compile(Path(origin).read_bytes(), origin, "exec", dont_inherit=True)
            arcname = name.replace(".", "/") + ("/__init__.pyc" if package else ".pyc")
            archive.writestr(arcname, bytes(_code_to_timestamp_pyc(code, 0, 0)))
            count += 1
    os.replace(tmp, out)
    return count


def _has_data(module: object) -> bool:
    """A package whose folder holds files or folders that are not modules or packages."""
    for top in list(getattr(module, "__path__", None) or []):
        with contextlib.suppress(OSError):
            for entry in os.scandir(top):
                if entry.is_dir():
                    if entry.name != "__pycache__" and not os.path.exists(
                            os.path.join(entry.path, "__init__.py")):
                        return True
                elif not entry.name.endswith((".py", ".pyc", ".pyi", "py.typed")):
                    return True
    return False


def build(out: Path, modules: Sequence[str]) -> Path:
    """Write the bundle of `modules` (and all they import) to `out`, from a fresh interpreter."""
    proc = subprocess.run([sys.executable, __file__, str(out), *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        from raven.errors import CommandError

        raise CommandError(f"cannot build the Python bundle for VM nodes: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return out


def python_argv(bundle: Path, module: str, args: Sequence[str]) -> list[str]:
    """Argument vector that runs `python -m module args` with `bundle` first on sys.path."""
    site = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    roots = [str(ROOT), *(p for p in sys.path if p and os.path.isdir(p) and p != str(ROOT))]
    # A package loaded from the bundle has its __path__ in the zip: a submodule imported later
    # (lazily) and not bundled is looked up in the package's folder on the filesystem instead.
    boot = f"""import sys, runpy
from importlib.machinery import PathFinder
class BundleFallback:
    @staticmethod
    def find_spec(name, path=None, target=None):
        parent = name.rpartition(".")[0]
        if not parent:
            return None
        return PathFinder.find_spec(name, [r + "/" + parent.replace(".", "/") for r in {roots!r}])
sys.path[:0] = [{str(bundle)!r}, {str(ROOT)!r}]
sys.path += {site!r}
sys.meta_path.append(BundleFallback)
sys.argv = [{module!r}, *sys.argv[1:]]
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""
    return [sys.executable, "-S", "-E", "-B", "-c", boot, *args]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: vmbundle.py OUT.zip MODULE...")
    sys.path[:0] = [str(ROOT)]
    print(f"{_write(Path(sys.argv[1]), sys.argv[2:])} modules")
