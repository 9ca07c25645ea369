"""Kubernetes source: list + watch pods, services, nodes, replicasets and jobs (client-go's Reflector).

The transport only: it brings the objects and hands them to an ObjectStore (kubestore.KubeStore
applies them to the identity index).  One thread per kind.  Each lists (paged, raw JSON: no
`kubernetes` model objects for 100k pods), then watches from the list's resourceVersion with
bookmarks, parsing the chunked stream line by line.  A 410 Gone (an expired resourceVersion, after
compaction or an API server restart) means relist, which the store diffs against what it holds, so
nothing deleted meanwhile stays and nothing added is lost.  A watch the server ends reconnects
from the last resourceVersion; an API server that cannot be reached is retried every
RECONNECT_CAP_S at most (jittered), however long the outage, and re-listed as soon as it answers:
a pod deleted and its IP reused meanwhile is named right within seconds.  `ready` turns true once
every kind has synced.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from podwire import log
from podwire.identity import slim
from podwire.identity.index import NEG_INF
from podwire.identity.kubestore import BAD_OBJECT, OWNER_KINDS

_log = log.get("podwire.identity.kube")
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


class ObjectStore(Protocol):
    """Where listed and watched objects go (kubestore.KubeStore: the identity index)."""

    def apply(self, kind: str, etype: str, obj: Any, at: float) -> None:
        """One ADDED/MODIFIED/DELETED object; raises one of BAD_OBJECT if it is malformed."""

    def replace(self, kind: str, objects: Iterable[Any], at: float, on_bad: Callable[[], None]) -> None:
        """A full list of `kind`; `on_bad()` for each malformed object, as it is skipped."""


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


class _Listed:
    """What a full list returned besides its objects."""

    __slots__ = ("count", "rv")

    def __init__(self) -> None:
        self.rv = ""
        self.count = 0


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

    def count_bad(self) -> None:
        self.bad_objects += 1


class KubeSource:
    """Feeds an ObjectStore from the Kubernetes API.  `start()` spawns the watch threads."""

    def __init__(
        self,
        store: ObjectStore,
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
        self.store = store
        self.api = api_client
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.backoff_cap_s = backoff_cap_s
        self.reconnect_cap_s = reconnect_cap_s
        self._clock = clock
        self._states = {k: _KindState(k) for k in kinds}
        self._stop = threading.Event()
        self._synced = {k: threading.Event() for k in kinds}
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
        listed = _Listed()
        self.store.replace(kind, self._items(state, listed), at, state.count_bad)
        state.rv = listed.rv
        state.objects = listed.count
        state.lists += 1
        _log.debug("kube_listed", kind=kind, objects=listed.count, resource_version=listed.rv, relist=relist)

    def _items(self, state: _KindState, listed: _Listed) -> Iterator[Any]:
        """The objects of a full list, page by page (one page decoded at a time)."""
        kind = state.kind
        decoder = slim.list_decoder(kind)
        cont = ""
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
            listed.rv = page.metadata.resourceVersion or listed.rv
            listed.count += len(page.items)
            yield from page.items
            cont = page.metadata.continue_
            del page
            if not cont:
                return

    def _watch(self, state: _KindState) -> None:
        from urllib3.exceptions import HTTPError  # with the kubernetes client: not resident without it

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
                except (OSError, ValueError, HTTPError) as exc:
                    raise _StreamLost(_brief(exc)) from None
                if self._stop.is_set():
                    return
                handle(kind, line)
        finally:
            state.response = None
            resp.close()  # never pool a connection we may have shut down
            resp.release_conn()

    # ---- watch events -----------------------------------------------------------------------

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
        if not obj.metadata.uid and kind not in OWNER_KINDS:
            state.bad_objects += 1
            return
        try:
            self.store.apply(kind, etype, obj, self._clock())
        except BAD_OBJECT as exc:  # e.g. a malformed pod IP
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
