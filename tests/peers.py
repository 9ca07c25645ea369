"""Real Go-built peers for podwire's tests: etcd + kube-apiserver, and helm.

Load as a pytest plugin (``pytest_plugins = ["tests.peers"]`` in tests/conftest.py,
or ``-p tests.peers``). Fixtures, all session scoped:

- ``kube_api`` -> :class:`KubeApi`: a real kube-apiserver (RBAC on, no kubelet, no
  controllers) on 127.0.0.1 backed by its own etcd in a temp dir.
- ``helm_bin`` -> :class:`pathlib.Path` of the pinned helm.

Binaries come from ``tools/peers/build.sh`` (cached outside the repo, keyed by
version). CI builds them before pytest; if they are missing the fixtures build them
(slow: minutes), unless ``PODWIRE_SKIP_PEERS=1``, which skips instead.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parent.parent
BUILD_SH = REPO / "tools" / "peers" / "build.sh"
SERVICE_CIDR = "10.96.0.0/12"
ADMIN_USER = "podwire-admin"
READY_TIMEOUT_S = 120.0
# A cold kube-apiserver build on 2 busy cores; CI prebuilds, so this is a fallback.
BUILD_TIMEOUT_S = 3600.0


class PeerUnavailable(RuntimeError):
    """A peer binary could not be found or built."""


def peer_binaries(*names: str) -> dict[str, Path]:
    """Paths of the named peers, building any that are missing.

    With PODWIRE_SKIP_PEERS=1 nothing is built: missing peers skip the test.
    """
    if os.environ.get("PODWIRE_SKIP_PEERS") == "1":
        proc = subprocess.run([str(BUILD_SH), "--check", *names], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"PODWIRE_SKIP_PEERS=1 and peers not built: {proc.stderr.strip()}")
    else:
        try:
            proc = subprocess.run(
                [str(BUILD_SH), *names], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"{BUILD_SH} {' '.join(names)} timed out") from exc
        if proc.returncode != 0:
            raise PeerUnavailable(f"{BUILD_SH} {' '.join(names)} failed:\n{proc.stderr[-4000:]}")
    paths = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(paths) != len(names):
        raise PeerUnavailable(f"{BUILD_SH} printed {proc.stdout!r} for {names}")
    return dict(zip(names, paths, strict=True))


# --- certificates --------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, accepted by kube-apiserver for serving, client and SA keys.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> _Ca:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podwire-test-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> _Ca:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, x509.load_pem_x509_certificate(cert_file.read_bytes()))

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """Return (cert PEM, key PEM). Client certs: CN = user, O = groups (how k8s reads them)."""
        key = _key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        usage = (
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, user: str, cert_pem: bytes, key_pem: bytes
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "podwire-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)},
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "podwire-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


# --- the running API server ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KubeApi:
    """A running kube-apiserver + etcd. Identities are client certs from ``ca_file``'s CA."""

    server: str  # https://127.0.0.1:<port>
    ca_file: Path  # CA that signed the serving cert (and all client certs)
    admin_kubeconfig: Path  # user podwire-admin in group system:masters
    data_dir: Path  # temp root: etcd data, certs, logs, kubeconfigs (removed at teardown)
    etcd_url: str  # http://127.0.0.1:<port>
    ca_key_file: Path

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Write a kubeconfig authenticating as ``user`` in ``groups`` (no RBAC grants by default).

        Every authenticated user is also in ``system:authenticated``, which by default can only
        do discovery / self-reviews, so resource access is forbidden until a (Cluster)RoleBinding
        names the user or one of the groups.
        """
        ca = _Ca.load(self.ca_file, self.ca_key_file)
        cert_pem, key_pem = ca.issue(user, groups)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        path = self.data_dir / "kubeconfigs" / f"{safe}-{uuid.uuid4().hex[:8]}.yaml"
        return _write_kubeconfig(path, self.server, _cert_pem(ca.cert), user, cert_pem, key_pem)

    def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` for ``kubeconfig`` (default: admin). Close it when done."""
        from kubernetes import config

        api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.admin_kubeconfig)
        )
        return api


def _free_port() -> int:
    # Bind-then-close leaves a small race; start-up retries with fresh ports if a bind fails.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class _StartFailed(RuntimeError):
    pass


def _wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    ctx: ssl.SSLContext | None,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _StartFailed(f"{url}: process exited with {proc.returncode}\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                body = resp.read().decode(errors="replace")
                if resp.status == 200:
                    return
                last = f"{resp.status} {body}"
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})\n{_tail(log)}")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest is SIGKILLed (timeout, CI abort) the kernel
    # kills the server too, so no orphan keeps a port or the temp dir busy.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _popen(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only prctl before exec: safe with threads
        )


def _start_etcd(etcd: Path, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    for _attempt in range(3):
        client, peer = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        data = root / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        log = root / "etcd.log"
        argv = [
            str(etcd),
            "--name=podwire",
            f"--data-dir={data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=podwire={peer_url}",
            "--initial-cluster-state=new",
            # Test data is disposable; skipping fsync keeps the shared disk quiet and fast.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        proc = _popen(argv, log)
        try:
            _wait_http(f"{client_url}/health", proc, log, None, 30.0)
            return proc, client_url
        except _StartFailed:
            _stop(proc)  # most likely a port race: try fresh ports
        except BaseException:
            _stop(proc)
            raise
    raise PeerUnavailable(f"etcd would not start:\n{_tail(root / 'etcd.log')}")


_ROOT_PREFIX = "podwire-kubeapi-"


def _remove_orphaned_roots() -> None:
    """Delete temp roots left by a SIGKILLed session (its servers already died with it)."""
    for owner in Path(tempfile.gettempdir()).glob(f"{_ROOT_PREFIX}*/owner.pid"):
        try:
            os.kill(int(owner.read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(owner.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


@contextlib.contextmanager
def kube_api_server(kube_apiserver: Path, etcd: Path, root: Path | None = None) -> Iterator[KubeApi]:
    """Run etcd + kube-apiserver until the block exits; always stops both and removes ``root``."""
    _remove_orphaned_roots()
    root = Path(tempfile.mkdtemp(prefix=_ROOT_PREFIX)) if root is None else root
    etcd_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    try:
        (root / "owner.pid").write_text(str(os.getpid()))
        pki = root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (root / "kubeconfigs").mkdir(exist_ok=True)
        ca = _Ca.create()
        (pki / "ca.crt").write_bytes(_cert_pem(ca.cert))
        (pki / "ca.key").write_bytes(_key_pem(ca.key))
        serving_cert, serving_key = ca.issue(
            "kube-apiserver",
            server=True,
            dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
        )
        (pki / "apiserver.crt").write_bytes(serving_cert)
        (pki / "apiserver.key").write_bytes(serving_key)
        sa_key = _key()
        (pki / "sa.key").write_bytes(_key_pem(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        admin_cert, admin_key = ca.issue(ADMIN_USER, ["system:masters"])
        (pki / "admin.crt").write_bytes(admin_cert)
        (pki / "admin.key").write_bytes(admin_key)
        for f in pki.iterdir():
            f.chmod(0o600)

        etcd_proc, etcd_url = _start_etcd(etcd, root)

        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        log = root / "kube-apiserver.log"
        server = ""
        for _attempt in range(3):
            port = _free_port()
            server = f"https://127.0.0.1:{port}"
            argv = [
                str(kube_apiserver),
                f"--etcd-servers={etcd_url}",
                f"--etcd-prefix=/podwire-{uuid.uuid4().hex[:8]}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki}",  # never write to /var/run/kubernetes
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # No controller-manager creates "default" ServiceAccounts, so (like envtest)
                # don't require them for pods.
                "--disable-admission-plugins=ServiceAccount",
                # No real endpoint to publish: 127.0.0.1 is not a valid Endpoints address.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ]
            api_proc = _popen(argv, log)
            try:
                _wait_http(f"{server}/readyz", api_proc, log, ctx, READY_TIMEOUT_S)
                break
            except _StartFailed:
                _stop(api_proc)
                api_proc = None
        else:
            raise PeerUnavailable(f"kube-apiserver would not start:\n{_tail(log)}")

        admin_kubeconfig = _write_kubeconfig(
            root / "kubeconfigs" / "admin.yaml", server, _cert_pem(ca.cert), ADMIN_USER, admin_cert, admin_key
        )
        yield KubeApi(
            server=server,
            ca_file=pki / "ca.crt",
            admin_kubeconfig=admin_kubeconfig,
            data_dir=root,
            etcd_url=etcd_url,
            ca_key_file=pki / "ca.key",
        )
    finally:
        _stop(api_proc)
        _stop(etcd_proc)
        shutil.rmtree(root, ignore_errors=True)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApi]:
    bins = peer_binaries("kube-apiserver", "etcd")
    with kube_api_server(bins["kube-apiserver"], bins["etcd"]) as api:
        yield api


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return peer_binaries("helm")["helm"]


def helm_env(home: Path) -> dict[str, str]:
    """Environment that keeps helm's config/cache/data under ``home`` (not the user's ~)."""
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env
