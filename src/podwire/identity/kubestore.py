"""Kubernetes objects -> the identity index: client-go's Store, beside kube.py's Reflector.

kube.py lists and watches (transport, resume, relist, backoff); this module applies what it
brings: ADDED/MODIFIED/DELETED pods, services and nodes become index entries, and a relist is
diffed against the index so nothing deleted meanwhile stays.  No I/O, no threads of its own (one
watch thread per kind calls in; the owner maps are shared, under one lock).

Pods are named by their controller, walked one step further for ReplicaSet -> Deployment
and Job -> CronJob (the ReplicaSet and Job maps are kept here, slim: one string each).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from podwire import log
from podwire.identity import slim
from podwire.identity.index import IdentityIndex, canonical_ip, make_identity
from podwire.model import Identity, IdentityKind

_log = log.get("podwire.identity.kube")
_intern = sys.intern

TERMINATED = ("Succeeded", "Failed")  # the kubelet released the pod's IP; it may be reused
OWNER_KINDS = ("replicasets", "jobs")  # kept as maps here, not index entries
# A malformed object (e.g. a pod IP that is not an address): counted as bad, never fatal.
BAD_OBJECT = (ValueError, TypeError, AttributeError, KeyError)
_PREFIX = {"pods": "pod/", "services": "svc/", "nodes": "node/"}


class KubeStore:
    """Applies slim Kubernetes objects (identity/slim.py) of each kind to an IdentityIndex."""

    def __init__(self, index: IdentityIndex) -> None:
        self.index = index
        # Owners: "ns/name" -> the ReplicaSet's Deployment / the Job's CronJob ("" = none).
        self._rs_owner: dict[str, str] = {}
        self._job_owner: dict[str, str] = {}
        # Pods whose ReplicaSet/Job was unknown when seen: "rs:ns/name" -> pod keys.
        self._pending: dict[str, set[str]] = {}
        self._pending_of: dict[str, str] = {}  # pod key -> its pending owner key
        self._owner_lock = threading.Lock()

    def apply(self, kind: str, etype: str, obj: Any, at: float) -> None:
        """One watch event's object (`etype` ADDED, MODIFIED or DELETED), as of `at`.
        Raises one of BAD_OBJECT on a malformed object."""
        self._appliers[kind](self, etype, obj, at)

    def replace(self, kind: str, objects: Iterable[Any], at: float, on_bad: Callable[[], None]) -> None:
        """A full list of `kind` (as of `at`): apply every object, then drop the entries of that
        kind the list no longer holds.  `on_bad()` for each malformed object (skipped), as it comes,
        so a list that breaks off later still counts it.  If iterating `objects` raises (the list
        broke off), what was applied stays and nothing is dropped: the next full list settles it."""
        if kind in OWNER_KINDS:
            top_kind = "Deployment" if kind == "replicasets" else "CronJob"
            fresh: dict[str, str] = {}
            for obj in objects:
                m = obj.metadata
                fresh[_intern(m.namespace) + "/" + m.name] = _controller_name(m, top_kind)
            self._replace_owners(kind, fresh, at)
            return
        apply = self._appliers[kind]
        seen: set[str] = set()
        for obj in objects:
            try:
                key = apply(self, "ADDED", obj, at)
            except BAD_OBJECT as exc:
                on_bad()
                _log.debug("kube_bad_object", kind=kind, error=repr(exc))
                continue
            if key is not None:
                seen.add(key)
        prefix = _PREFIX[kind]
        gone = self.index.retain(lambda k: not k.startswith(prefix) or k in seen, at=at)
        if gone:
            _log.info("kube_relist_removed", kind=kind, removed=gone)
        if kind == "pods" and self._pending_of:
            # pods deleted while the watch was down no longer wait for their owner
            with self._owner_lock:
                for key in [k for k in self._pending_of if k not in seen]:
                    self._drop_pending(key, self._pending_of[key])

    def _apply_pod(self, etype: str, obj: slim.Pod, at: float) -> str | None:
        meta = obj.metadata
        key: str = "pod/" + meta.uid
        status = obj.status
        ips: list[str] = []
        if etype != "DELETED" and status.phase not in TERMINATED:
            for entry in status.podIPs:
                if entry.ip:
                    ips.append(entry.ip if ":" not in entry.ip else canonical_ip(entry.ip))
            if not ips and status.podIP:
                ips.append(canonical_ip(status.podIP))
        if not ips:
            self._forget_pending(key)
            self.index.remove(key, at)
            return None
        node = obj.spec.nodeName or None
        if obj.spec.hostNetwork:
            self._forget_pending(key)
            if not node:
                self.index.remove(key, at)
                return None
            self.index.set(key, ips, make_identity(IdentityKind.NODE, node, node=node, host_network=True), at)
            return key
        kind, owner = _controller(meta)
        with self._owner_lock:
            ident = self._pod_identity(key, meta.namespace, meta.name, node, kind, owner, meta)
            self.index.set(key, ips, ident, at)
        return key

    def _pod_identity(
        self,
        key: str,
        ns: str,
        name: str,
        node: str | None,
        kind: str | None,
        owner: str,
        meta: slim.Meta | None = None,
    ) -> Identity:
        """Call with _owner_lock held (it may file the pod as waiting for its owner)."""
        workload, wkind = name, "Pod"
        if kind == "ReplicaSet" or kind == "Job":
            table = self._rs_owner if kind == "ReplicaSet" else self._job_owner
            ref = ns + "/" + owner
            top = table.get(ref)
            if top is None:
                # Owner not seen (yet): name it by the owner itself, or by the Deployment its
                # generated name gives away, and fix it up when the owner arrives.
                pkey = ("rs:" if kind == "ReplicaSet" else "job:") + ref
                old = self._pending_of.get(key)
                if old != pkey:
                    if old is not None:
                        self._drop_pending(key, old)
                    self._pending.setdefault(pkey, set()).add(key)
                    self._pending_of[key] = pkey
                workload, wkind = owner, kind
                hash_ = slim.labels(meta).get("pod-template-hash") if meta is not None else None
                if kind == "ReplicaSet" and hash_ and owner.endswith("-" + hash_):
                    workload, wkind = owner[: -len(hash_) - 1], "Deployment"
            else:
                if key in self._pending_of:
                    self._drop_pending(key, self._pending_of[key])
                if top:
                    workload, wkind = top, "Deployment" if kind == "ReplicaSet" else "CronJob"
                else:
                    workload, wkind = owner, kind
        elif kind is not None and owner:
            workload, wkind = owner, kind  # StatefulSet, DaemonSet, or anything else that controls it
        return make_identity(
            IdentityKind.POD, name, namespace=ns, workload=workload, workload_kind=wkind, node=node
        )

    def _drop_pending(self, key: str, pkey: str) -> None:
        self._pending_of.pop(key, None)
        keys = self._pending.get(pkey)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._pending[pkey]

    def _forget_pending(self, key: str) -> None:
        if key in self._pending_of:
            with self._owner_lock:
                pkey = self._pending_of.get(key)
                if pkey is not None:
                    self._drop_pending(key, pkey)

    def _apply_service(self, etype: str, obj: slim.Service, at: float) -> str | None:
        meta = obj.metadata
        key: str = "svc/" + meta.uid
        ips: list[str] = []
        if etype != "DELETED":
            spec = obj.spec
            for ip in spec.clusterIPs or ((spec.clusterIP,) if spec.clusterIP else ()):
                if ip and ip != "None":
                    ips.append(ip if ":" not in ip else canonical_ip(ip))
        if not ips:
            self.index.remove(key, at)
            return None
        self.index.set(key, ips, make_identity(IdentityKind.SERVICE, meta.name, namespace=meta.namespace), at)
        return key

    def _apply_node(self, etype: str, obj: slim.Node, at: float) -> str | None:
        meta = obj.metadata
        key: str = "node/" + meta.uid
        ips: list[str] = []
        if etype != "DELETED":
            for addr in obj.status.addresses:
                if addr.type == "InternalIP" and addr.address:
                    try:
                        ips.append(canonical_ip(addr.address))
                    except ValueError:
                        continue
        if not ips:
            self.index.remove(key, at)
            return None
        name = meta.name
        self.index.set(key, ips, make_identity(IdentityKind.NODE, name, node=name), at)
        return key

    def _apply_rs(self, etype: str, obj: slim.Owned, at: float) -> str | None:
        return self._set_owner(True, obj.metadata, etype, at)

    def _apply_job(self, etype: str, obj: slim.Owned, at: float) -> str | None:
        return self._set_owner(False, obj.metadata, etype, at)

    def _set_owner(self, is_rs: bool, meta: slim.Meta, etype: str, at: float) -> str | None:
        ref = _intern(meta.namespace) + "/" + meta.name
        table = self._rs_owner if is_rs else self._job_owner
        with self._owner_lock:
            if etype == "DELETED":
                # Its pods keep their names: they are going too, and history should say who they were.
                table.pop(ref, None)
                return None
            top = _controller_name(meta, "Deployment" if is_rs else "CronJob")
            old = table.get(ref)
            table[ref] = top
            if old != top:
                self._owner_changed(is_rs, ref, old, at)
        return None

    def _owner_changed(self, is_rs: bool, ref: str, old: str | None, at: float) -> None:
        """Rename the pods of owner `ref` (owner lock held): those that waited for it, and all of
        them if it was adopted or orphaned (rare: then they are found by scanning)."""
        waiting = self._pending.pop(("rs:" if is_rs else "job:") + ref, set())
        for key in waiting:
            self._pending_of.pop(key, None)
        if old is not None:
            waiting |= self._pods_of(ref, old)
        kind = "ReplicaSet" if is_rs else "Job"
        ns, _, name = ref.partition("/")
        for key in waiting:
            got = self.index.get(key)
            if got is None:
                continue
            ident, ips = got
            if ident.kind is not IdentityKind.POD:
                continue
            new = self._pod_identity(key, ns, ident.name, ident.node, kind, name)
            if new != ident:
                self.index.set(key, ips, new, at)

    def _replace_owners(self, kind: str, fresh: dict[str, str], at: float) -> None:
        is_rs = kind == "replicasets"
        with self._owner_lock:
            old = self._rs_owner if is_rs else self._job_owner
            if is_rs:
                self._rs_owner = fresh
            else:
                self._job_owner = fresh
            prefix = "rs:" if is_rs else "job:"
            for ref, top in fresh.items():
                before = old.get(ref)
                if before != top and (before is not None or prefix + ref in self._pending):
                    self._owner_changed(is_rs, ref, before, at)

    def _pods_of(self, ref: str, top: str) -> set[str]:
        """Pod keys now named after owner `ref` (whose own owner was `top`): its pods are named
        `<owner>-<suffix>`."""
        ns, _, name = ref.partition("/")
        out: set[str] = set()
        for key in self.index.keys():  # noqa: SIM118 - a snapshot list, not a view
            if not key.startswith("pod/"):
                continue
            got = self.index.get(key)
            if got is None:
                continue
            ident = got[0]
            named = ident.workload in (top or name, name)
            if named and ident.namespace == ns and ident.name.startswith(name + "-"):
                out.add(key)
        return out

    _appliers: dict[str, Callable[[KubeStore, str, Any, float], str | None]] = {
        "pods": _apply_pod,
        "services": _apply_service,
        "nodes": _apply_node,
        "replicasets": _apply_rs,
        "jobs": _apply_job,
    }


def _controller(meta: slim.Meta) -> tuple[str | None, str]:
    """(kind, name) of the controlling owner reference, else of the first one, else (None, '')."""
    refs = meta.ownerReferences
    if not refs:
        return None, ""
    for ref in refs:
        if ref.controller:
            return ref.kind, ref.name
    return refs[0].kind, refs[0].name


def _controller_name(meta: slim.Meta, kind: str) -> str:
    k, name = _controller(meta)
    return _intern(name) if k == kind and name else ""
