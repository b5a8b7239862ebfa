"""Discovery documents: /version, /api, /apis, /api/v1, /apis/<group>/<version>.

Clients that ask for aggregated discovery (apidiscovery.k8s.io/v2) also accept the plain format;
we answer plain, with Content-Type application/json, which client-go and kubectl fall back to.
"""

from __future__ import annotations

import platform
from typing import Any

from raven import __version__
from raven.apiserver.resources import STATUS_VERBS, Registry, ResourceType

KUBE_COMPAT_VERSION = ("1", "30")


def version_info() -> dict[str, Any]:
    major, minor = KUBE_COMPAT_VERSION
    return {
        "major": major, "minor": minor,
        "gitVersion": f"v{major}.{minor}.0-raven.{__version__}",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython", "platform": f"{platform.system().lower()}/{platform.machine()}",
    }


def core_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def group_list(registry: Registry) -> dict[str, Any]:
    groups = registry.group_versions()
    ordered = sorted((g for g in groups if g), key=lambda g: (g.endswith("raven.openyurt.io"), g))
    return {
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [_group_entry(g, groups[g]) for g in ordered],
    }


def group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(name)
    if not versions or not name:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(name, versions)}


def _resource_entry(rtype: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rtype.plural, "singularName": rtype.singular_name,
        "namespaced": rtype.namespaced, "kind": rtype.kind, "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    return entry


def resource_list(registry: Registry, group_name: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group_name, version)
    if not types:
        return None
    resources = []
    for rtype in types:
        resources.append(_resource_entry(rtype))
        if rtype.has_status:
            resources.append({
                "name": f"{rtype.plural}/status", "singularName": "",
                "namespaced": rtype.namespaced, "kind": rtype.kind, "verbs": list(STATUS_VERBS),
            })
        for sub in rtype.connect_subresources:
            # kube-apiserver's verbs: log is read (get); exec, attach and proxy are connects.
            verbs = ["get"] if sub == "log" else ["create", "get"]
            if sub == "proxy":
                verbs = ["create", "delete", "get", "patch", "update"]
            resources.append({
                "name": f"{rtype.plural}/{sub}", "singularName": "",
                "namespaced": rtype.namespaced,
                "kind": "Pod" if sub == "log" else f"{rtype.kind}{sub.capitalize()}Options",
                "verbs": verbs,
            })
    return {
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": f"{group_name}/{version}" if group_name else version,
        "resources": resources,
    }
