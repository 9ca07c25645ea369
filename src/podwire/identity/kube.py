"""Kubernetes source: list + watch pods, services, nodes, replicasets and jobs into the index.

One thread per kind.  Each lists (paged, raw JSON: no `kubernetes` model objects for 100k
pods), then watches from the list's resourceVersion with bookmarks, parsing the chunked
stream line by line.  A 410 Gone (an expired resourceVersion, after compaction or an API
server restart) means relist, then a diff against the index, so nothing deleted meanwhile
stays and nothing added is lost.  A watch the server ends reconnects from the last
resourceVersion; an API server that cannot be reached is retried every RECONNECT_CAP_S at most
(jittered), however long the outage, and re-listed as soon as it answers: a pod deleted and its
IP reused meanwhile is named right within seconds.  `ready` turns true once every kind has synced.

Pods are named by their controller, walked one step further for ReplicaSet -> Deployment
and Job -> CronJob (the ReplicaSet and Job maps are kept here, slim: one string each).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import urllib3

from podwire import log
from podwire.identity import slim
from podwire.identity.index import NEG_INF, IdentityIndex, canonical_ip, make_identity
from podwire.model import Identity, IdentityKind

_log = log.get("podwire.identity.kube")
_intern = sys.intern
_loads = json.loads

# kind -> (API group for messages, resource, list path)
KINDS: dict[str, tuple[str, str, str]] = {
    "replicasets": ("apps", "replicasets", "/apis/apps/v1/replicasets"),
    "jobs": ("batch", "jobs", "/apis/batch/v1/jobs"),
    "nodes": ("", "nodes", "/api/v1/nodes"),
    "services": ("", "services", "/api/v1/services"),
    "pods": ("", "pods", "/api/v1/pods"),
}
# What the Helm chart's ClusterRole grants, and all this source needs.
REQUIRED_RULES = "get/list/watch on pods, services, nodes, replicasets.apps, jobs.batch"
PAGE_SIZE = 5000
RECONNECT_CAP_S = 2.0  # retry an unreachable API server at least this often, whatever the outage
OWNER_WAIT_S = 30.0  # pods wait this long for ReplicaSets/Jobs to sync, so owners resolve at once
TERMINATED = ("Succeeded", "Failed")  # the kubelet released the pod's IP; it may be reused


class KubeConfigError(RuntimeError):
    """No usable cluster configuration (not in a cluster, no kubeconfig)."""


class KubeAccessError(RuntimeError):
    """The API server forbids what the source needs (RBAC); the message names the permission."""


class _Gone(Exception):
    """410: the resourceVersion is too old; relist."""


class _Forbidden(Exception):
    pass


class _StreamLost(Exception):
    """The watch connection broke mid-stream; resume from the last resourceVersion."""


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class KindStats:
    kind: str
    synced: bool
    resource_version: str
    lists: int
    relists: int
    watches: int
    events: int
    bad_objects: int
    bookmarks: int
    errors: int
    objects: int
    error: str | None  # the last error, if the kind is not watching now


@dataclass(frozen=True, slots=True)
class KubeStats:
    ready: bool
    events_applied: int
    apply_seconds: float  # CPU-ish time spent decoding and applying watch events
    first_sync_s: float | None
    kinds: tuple[KindStats, ...]


class Backoff:
    """Exponential backoff with full jitter, capped; reset after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2.0**self.failures))
        self.failures += 1
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def load_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """An ApiClient from `kubeconfig`; else in-cluster (the pod's service account token, which
    the client re-reads as the kubelet rotates it); else ~/.kube/config."""
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    env = os.environ if environ is None else environ
    cfg = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
        elif in_cluster(env, service_account_dir):
            InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=os.path.join(service_account_dir, "token"),
                cert_filename=os.path.join(service_account_dir, "ca.crt"),
                environ=env,
            ).load_and_set(cfg)
        else:
            config.load_kube_config(context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    except Exception as exc:  # ConfigException, YAML errors, OSError, bad base64...: all one line
        where = kubeconfig or "in-cluster service account or ~/.kube/config"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KubeConfigError(f"kubernetes: cannot load configuration from {where}: {detail}") from None
    cfg.retries = 0  # we retry, with our own backoff and logging
    return client.ApiClient(cfg)


def in_cluster(
    environ: Mapping[str, str] | None = None, service_account_dir: str = SERVICE_ACCOUNT_DIR
) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        os.path.join(service_account_dir, "token")
    )


class _KindState:
    __slots__ = (
        "apply_s",
        "bad_objects",
        "bookmarks",
        "error",
        "errors",
        "events",
        "kind",
        "lists",
        "objects",
        "override_rv",
        "reconnecting",
        "relists",
        "response",
        "rv",
        "synced",
        "thread",
        "watches",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rv = ""
        self.synced = False
        self.lists = 0
        self.relists = 0
        self.watches = 0
        self.events = 0
        self.apply_s = 0.0
        self.bad_objects = 0
        self.bookmarks = 0
        self.errors = 0
        self.objects = 0
        self.error: str | None = None
        self.response: Any = None
        self.override_rv: str | None = None
        self.reconnecting = False
        self.thread: threading.Thread | None = None


class KubeSource:
    """Feeds an IdentityIndex from the Kubernetes API.  `start()` spawns the watch threads."""

    def __init__(
        self,
        index: IdentityIndex,
        api_client: Any,
        *,
        kinds: tuple[str, ...] = tuple(KINDS),
        page_size: int = PAGE_SIZE,
        watch_timeout_s: tuple[int, int] = (240, 360),
        backoff_cap_s: float = 30.0,
        reconnect_cap_s: float = RECONNECT_CAP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
        self.index = index
        self.api = api_client
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.reconnect_cap_s = reconnect_cap_s
        self._clock = clock
        self._states = {k: _KindState(k) for k in kinds}
        self._stop = threading.Event()
        self._synced = {k: threading.Event() for k in kinds}
        # Owners: "ns/name" -> the ReplicaSet's Deployment / the Job's CronJob ("" = none).
        self._rs_owner: dict[str, str] = {}
        self._job_owner: dict[str, str] = {}
        # Pods whose ReplicaSet/Job was unknown when seen: "rs:ns/name" -> pod keys.
        self._pending: dict[str, set[str]] = {}
        self._pending_of: dict[str, str] = {}  # pod key -> its pending owner key
        self._owner_lock = threading.Lock()
        self._start_time: float | None = None
        self.first_sync_s: float | None = None
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._methods: dict[str, Callable[..., Any]] = {}
        self._decoders = {k: slim.event_decoder(k) for k in kinds}

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(s.synced for s in self._states.values())

    @property
    def events_applied(self) -> int:
        """Watch events applied, all kinds (each kind's counter is written by its thread only)."""
        return sum(s.events for s in self._states.values())

    @property
    def apply_seconds(self) -> float:
        return sum(s.apply_s for s in self._states.values())

    def start(self) -> None:
        self._start_time = time.monotonic()
        for kind, state in self._states.items():
            t = threading.Thread(target=self._run, args=(kind,), name=f"podwire-kube-{kind}", daemon=True)
            state.thread = t
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for state in self._states.values():
            self._cut(state)
        end = time.monotonic() + timeout
        for state in self._states.values():
            if state.thread is not None:
                state.thread.join(max(0.0, end - time.monotonic()))
        try:
            self.api.close()
        except Exception as exc:  # closing a pool must not fail shutdown
            _log.debug("kube_client_close_failed", error=repr(exc))

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the first sync of every kind.  Raises KubeAccessError if RBAC forbids one."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ready:
                return True
            self.raise_for_access()
            time.sleep(0.05)
        self.raise_for_access()
        return self.ready

    def raise_for_access(self) -> None:
        denied = [s.error for s in self._states.values() if s.error and s.error.startswith("forbidden")]
        if denied:
            raise KubeAccessError(denied[0])

    def reconnect(self, kind: str | None = None, resource_version: str | None = None) -> None:
        """Drop the current watch of `kind` (all if None); it resumes from `resource_version`
        if given (an expired one forces the 410 -> relist path), else from the last one seen."""
        for state in self._states.values():
            if kind is None or state.kind == kind:
                state.override_rv = resource_version
                state.reconnecting = True
                self._cut(state)

    @staticmethod
    def _cut(state: _KindState) -> None:
        resp = state.response
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the reading thread now, not at the next event
            except Exception as exc:  # already released or closed: nothing to unblock
                _log.debug("kube_watch_shutdown", kind=state.kind, error=repr(exc))

    # ---- the per-kind loop ------------------------------------------------------------------

    def _run(self, kind: str) -> None:
        try:
            self._loop(kind)
        except BaseException as exc:  # a bug: say so once, and stay unready rather than die silently
            self._states[kind].error = f"internal error: {exc!r}"
            with contextlib.suppress(Exception):  # even logging is gone (closed stderr)
                _log.exception("kube_watch_thread_failed", kind=kind)

    def _loop(self, kind: str) -> None:
        state = self._states[kind]
        backoff = Backoff(cap=self.backoff_cap_s, rng=self._rng)
        # The API server unreachable (down, restarting, network): retry within seconds, however
        # long the outage, so the names are right again soon after it ends.  Errors the server
        # answers (403, 5xx) back off to backoff_cap_s.
        unreachable = Backoff(cap=self.reconnect_cap_s, rng=self._rng)
        need_list = True
        unreachable_since: float | None = None
        last_log = 0.0
        while not self._stop.is_set():
            try:
                if need_list:
                    if kind == "pods" and not state.synced:
                        self._wait_owners()
                    self._list(state)
                    need_list = False
                    backoff.reset()
                    unreachable.reset()
                    if not state.synced:
                        state.synced = True
                        self._synced[kind].set()
                        self._on_synced(kind)
                began = time.monotonic()
                self._watch(state)
                if unreachable_since is not None:
                    down_s = round(time.monotonic() - unreachable_since, 1)
                    _log.info("kube_reachable_again", kind=kind, after_s=down_s)
                    unreachable_since = None
                state.error = None
                if time.monotonic() - began > 1.0 or state.reconnecting:
                    backoff.reset()
                    unreachable.reset()
                    continue
                # The server closed the watch at once (e.g. shutting down): don't spin on it.
                delay = backoff.next()
            except _Gone as exc:
                state.relists += 1
                need_list = True
                _log.info("kube_resource_version_expired", kind=kind, detail=str(exc), action="relist")
                continue
            except _StreamLost as exc:
                if self._stop.is_set():
                    break
                if state.reconnecting:
                    state.reconnecting = False
                    continue  # our own reconnect() cut the stream: resume at once
                state.errors += 1
                delay = backoff.next()
                _log.info("kube_watch_interrupted", kind=kind, error=str(exc), retry_in_s=round(delay, 2))
            except _Forbidden as exc:
                state.errors += 1
                state.error = str(exc)
                if time.monotonic() - last_log > 60 or backoff.failures == 0:
                    _log.error("kube_forbidden", kind=kind, error=str(exc))
                    last_log = time.monotonic()
                delay = max(backoff.next(), 5.0)
            except _ApiError as exc:
                state.errors += 1
                state.error = f"API error {exc}"
                if exc.status == 410:
                    state.relists += 1
                    need_list = True
                    continue
                _log.warning("kube_api_error", kind=kind, status=exc.status, error=exc.message)
                delay = backoff.next()
            except Exception as exc:  # network: refused, reset, timeout, TLS, truncated stream
                if self._stop.is_set():
                    break
                if state.reconnecting:
                    state.reconnecting = False
                    continue  # our own reconnect() cut the stream: resume at once
                state.errors += 1
                state.error = f"unreachable: {_brief(exc)}"
                # Whatever changed meanwhile (pods deleted and their IPs reused) is in a fresh list:
                # re-list as soon as the server answers, rather than trust a watch resumed from
                # before the outage.
                if not need_list:
                    state.relists += 1
                    need_list = True
                delay = unreachable.next()
                now = time.monotonic()
                if unreachable_since is None:
                    unreachable_since = now
                if now - last_log > 30 or unreachable.failures == 1:
                    _log.warning(
                        "kube_unreachable",
                        kind=kind,
                        server=getattr(self.api.configuration, "host", "?"),
                        error=_brief(exc),
                        retry_in_s=round(delay, 2),
                        ready=self.ready,
                    )
                    last_log = now
            self._stop.wait(delay)

    def _wait_owners(self) -> None:
        end = time.monotonic() + OWNER_WAIT_S
        for k in ("replicasets", "jobs"):
            ev = self._synced.get(k)
            if ev is not None:
                while not self._stop.is_set() and not ev.wait(0.2):
                    if time.monotonic() > end or self._states[k].error:
                        return

    def _on_synced(self, kind: str) -> None:
        if self.ready and self.first_sync_s is None and self._start_time is not None:
            self.first_sync_s = time.monotonic() - self._start_time
            _log.info(
                "kube_synced",
                seconds=round(self.first_sync_s, 3),
                objects={k: s.objects for k, s in self._states.items()},
            )

    # ---- HTTP -------------------------------------------------------------------------------

    def _get(self, kind: str, params: dict[str, Any], read_timeout: float) -> Any:
        """The raw urllib3 response of a list or watch call (the body is ours to stream)."""
        from kubernetes.client.exceptions import ApiException

        method = self._methods.get(kind)
        if method is None:
            method = self._methods[kind] = _list_method(self.api, kind)
        try:
            return method(_preload_content=False, _request_timeout=(10.0, read_timeout), **params)
        except ApiException as exc:
            body = exc.body if isinstance(exc.body, (str, bytes)) else b""
            self._raise_status(
                kind,
                int(exc.status or 0),
                body.encode() if isinstance(body, str) else body,
                verb="watch" if params.get("watch") else "list",
            )
            raise

    def _raise_status(self, kind: str, status: int, data: bytes, verb: str = "list") -> None:
        try:
            doc = _loads(data)
            message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
        except ValueError:
            message = data[:200].decode(errors="replace")
        if status == 410:
            raise _Gone(message or "410 Gone")
        if status == 403:
            group, resource, _path = KINDS[kind]
            res = f"{resource}.{group}" if group else resource
            raise _Forbidden(
                f"forbidden: cannot {verb} {res} cluster-wide ({message}); podwire needs a ClusterRole "
                f"with {REQUIRED_RULES}"
            )
        if status == 401:
            raise _ApiError(status, f"unauthorized: the credentials were rejected ({message})")
        raise _ApiError(status, message or "error")

    def _list(self, state: _KindState) -> None:
        kind = state.kind
        relist = state.lists > 0
        at = self._clock() if relist else NEG_INF  # the first list: held since before we looked
        decoder = slim.list_decoder(kind)
        seen: set[str] = set()
        fresh: dict[str, str] = {}
        owners = kind in ("replicasets", "jobs")
        top_kind = "Deployment" if kind == "replicasets" else "CronJob"
        apply = self._appliers[kind]
        cont = ""
        rv = ""
        count = 0
        while True:
            params: dict[str, Any] = {"limit": self.page_size}
            if cont:
                params["_continue"] = cont
            resp = self._get(kind, params, 120.0)
            state.response = resp  # so stop() can cut a long read short
            try:
                if self._stop.is_set():
                    raise _StreamLost("stopping")
                data = resp.data
            finally:
                state.response = None
                resp.release_conn()
            try:
                page = decoder.decode(data)
            except msgspec.DecodeError as exc:
                raise _ApiError(500, f"undecodable {kind} list: {exc}") from None
            del data
            rv = page.metadata.resourceVersion or rv
            count += len(page.items)
            if owners:
                for obj in page.items:
                    m = obj.metadata
                    fresh[_intern(m.namespace) + "/" + m.name] = _controller_name(m, top_kind)
            else:
                for obj in page.items:
                    try:
                        key = apply(self, "ADDED", obj, at)
                    except (ValueError, TypeError, AttributeError, KeyError) as exc:
                        state.bad_objects += 1
                        _log.debug("kube_bad_object", kind=kind, error=repr(exc))
                        continue
                    if key is not None:
                        seen.add(key)
            cont = page.metadata.continue_
            del page
            if not cont:
                break
        if owners:
            self._replace_owners(kind, fresh, at)
        else:
            prefix = _PREFIX[kind]
            gone = self.index.retain(lambda k: not k.startswith(prefix) or k in seen, at=at)
            if gone:
                _log.info("kube_relist_removed", kind=kind, removed=gone)
        state.rv = rv
        state.objects = count
        state.lists += 1
        _log.debug("kube_listed", kind=kind, objects=count, resource_version=rv, relist=relist)

    def _watch(self, state: _KindState) -> None:
        kind = state.kind
        rv = state.override_rv if state.override_rv is not None else state.rv
        state.reconnecting = False
        timeout = self._rng.randint(*self.watch_timeout_s)
        params = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": rv,
            "timeout_seconds": timeout,
        }
        try:
            resp = self._get(kind, params, timeout + 30.0)
        except _Gone:
            state.override_rv = None  # the server has seen it: done with it
            raise
        state.response = resp
        if self._stop.is_set() or state.reconnecting:
            # stop() or reconnect() ran while we connected, before it could see this response.
            state.response = None
            resp.close()
            resp.release_conn()
            return
        state.override_rv = None
        state.watches += 1
        handle = self.apply_line
        lines = _lines(resp)
        try:
            while True:
                try:
                    line = next(lines)
                except StopIteration:
                    return  # the server ended the watch (timeoutSeconds): resume from state.rv
                except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                    raise _StreamLost(_brief(exc)) from None
                if self._stop.is_set():
                    return
                handle(kind, line)
        finally:
            state.response = None
            resp.close()  # never pool a connection we may have shut down
            resp.release_conn()

    # ---- applying events --------------------------------------------------------------------

    def apply_line(self, kind: str, line: bytes) -> None:
        """Decode and apply one watch event (a JSON line).  Raises _Gone on a 410 ERROR event."""
        t0 = time.perf_counter()
        state = self._states[kind]
        try:
            event = self._decoders[kind].decode(line)
            etype = event.type
        except msgspec.DecodeError:
            etype = "ERROR" if b'"ERROR"' in line[:40] else ""
            if not etype:
                state.bad_objects += 1  # garbage on the stream: count it, keep watching
                return
        if etype == "ERROR":
            self._watch_error(kind, line)
        obj = event.object
        if etype == "BOOKMARK":
            state.bookmarks += 1
            state.rv = obj.metadata.resourceVersion or state.rv
            return
        if not obj.metadata.uid and kind not in ("replicasets", "jobs"):
            state.bad_objects += 1
            return
        try:
            self._appliers[kind](self, etype, obj, self._clock())
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # e.g. a malformed pod IP
            state.bad_objects += 1
            _log.debug("kube_bad_object", kind=kind, error=repr(exc))
        if obj.metadata.resourceVersion:
            state.rv = obj.metadata.resourceVersion
        state.events += 1
        state.apply_s += time.perf_counter() - t0

    def _watch_error(self, kind: str, line: bytes) -> None:
        """An ERROR event carries a Status: 410 means relist; anything else ends this watch."""
        try:
            status = _loads(line).get("object") or {}
        except ValueError:
            status = {}
        code = status.get("code")
        message = str(status.get("message", ""))
        if code == 410 or status.get("reason") in ("Expired", "Gone"):
            raise _Gone(message)
        if code == 403:
            self._raise_status(kind, 403, json.dumps(status).encode(), verb="watch")
        raise _ApiError(int(code or 500), message or "watch error")

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

    _appliers: dict[str, Callable[[KubeSource, str, Any, float], str | None]] = {
        "pods": _apply_pod,
        "services": _apply_service,
        "nodes": _apply_node,
        "replicasets": _apply_rs,
        "jobs": _apply_job,
    }

    # ---- stats ------------------------------------------------------------------------------

    def stats(self) -> KubeStats:
        return KubeStats(
            ready=self.ready,
            events_applied=self.events_applied,
            apply_seconds=self.apply_seconds,
            first_sync_s=self.first_sync_s,
            kinds=tuple(
                KindStats(
                    kind=s.kind,
                    synced=s.synced,
                    resource_version=s.rv,
                    lists=s.lists,
                    relists=s.relists,
                    watches=s.watches,
                    events=s.events,
                    bad_objects=s.bad_objects,
                    bookmarks=s.bookmarks,
                    errors=s.errors,
                    objects=s.objects,
                    error=s.error,
                )
                for s in self._states.values()
            ),
        )

    def kind_state(self, kind: str) -> KindStats:
        return next(k for k in self.stats().kinds if k.kind == kind)


_PREFIX = {"pods": "pod/", "services": "svc/", "nodes": "node/"}


def _list_method(api: Any, kind: str) -> Callable[..., Any]:
    """The official client's list-or-watch call for a kind, across all namespaces."""
    from kubernetes import client

    if kind == "pods":
        return client.CoreV1Api(api).list_pod_for_all_namespaces
    if kind == "services":
        return client.CoreV1Api(api).list_service_for_all_namespaces
    if kind == "nodes":
        return client.CoreV1Api(api).list_node
    if kind == "replicasets":
        return client.AppsV1Api(api).list_replica_set_for_all_namespaces
    return client.BatchV1Api(api).list_job_for_all_namespaces


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


def _lines(resp: Any) -> Iterator[bytes]:
    """Split a chunked watch stream into JSON lines (one event per line)."""
    buf = b""
    for chunk in resp.stream(1 << 16, decode_content=True):
        if buf:
            chunk = buf + chunk
        parts = chunk.split(b"\n")
        buf = parts.pop()
        for line in parts:
            if line:
                yield line
    if buf.strip():
        yield buf


def _brief(exc: BaseException) -> str:
    """One line: the innermost cause of a urllib3/socket error."""
    seen = exc
    for _ in range(5):
        nxt = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(nxt, BaseException):
            break
        seen = nxt
    text = str(seen).splitlines()[0] if str(seen) else type(seen).__name__
    return f"{type(seen).__name__}: {text}"[:300]
