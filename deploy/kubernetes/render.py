"""Render a Kustomize directory of this repository without kubectl: the subset of Kustomize these manifests use.

`kubectl kustomize DIR` (or `kustomize build DIR`) is the real renderer; this one exists so that CI and
machines without kubectl can render and validate the same objects. It understands `resources` (files
and directories), `namespace`, `images` (newName, newTag, digest) and `patches` given by `path`
(strategic merge by kind and name: maps merge, containers/env/volumes merge by name, other lists are
replaced) and refuses any other field, so it can never silently render something different.
tests/deploy/test_manifests.py checks it against `kubectl kustomize` where kubectl is installed.

    python deploy/kubernetes/render.py deploy/kubernetes/overlays/managed > manifests.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes"}
Obj = dict[str, Any]


def build(directory: Path) -> list[Obj]:
    """The objects a kustomization directory renders to, in resource order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{directory}: kustomization fields {sorted(unknown)} are not supported by render.py")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += build(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is supported, not {patch}")
        doc = yaml.safe_load((directory / patch["path"]).read_text())
        _merge(_target(objects, doc, directory / patch["path"]), doc)
    namespace = spec.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        for image in spec.get("images", []):
            _set_image(obj, image)
    return objects


def _target(objects: list[Obj], patch: Obj, where: Path) -> Obj:
    """The one object the patch names (kind and metadata.name)."""
    found = [o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
    if len(found) != 1:
        raise ValueError(f"{where}: patch matches {len(found)} objects, not 1")
    return found[0]


def _merge(base: Obj, patch: Obj) -> None:
    """Strategic merge for the fields these manifests patch."""
    for key, value in patch.items():
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        elif key in MERGE_BY_NAME and isinstance(value, list) and isinstance(current, list):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    current.append(item)
        else:
            base[key] = value


def _set_image(obj: Obj, image: Obj) -> None:
    """Rewrite containers whose image is `name` (with or without a tag) as Kustomize's `images:` does."""
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        ref: str = container["image"]
        name = ref.split("@", 1)[0].rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else ref
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{new}:{image['newTag']}"
        else:
            container["image"] = new + ref[len(name) :]


def render(directory: Path) -> str:
    """The objects as one multi-document YAML stream."""
    return yaml.safe_dump_all(build(directory), sort_keys=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: render.py KUSTOMIZATION_DIR")
    sys.stdout.write(render(Path(sys.argv[1])))
