"""identity room: IP address -> who held it (pod, service, node, external), over time.

Public API:
    build_service(settings) -> IdentityService   (.resolve, .learn_dns, .ready, .start, .stop, .stats)
    IdentityIndex, ExternalNames, KubeSource (list/watch) -> KubeStore (applies to the index),
    inventory.load
    name_connection(resolver, record) -> NamedConnection; identity_json(identity) -> dict
"""

from podwire.identity.external import CidrTable, ExternalNames
from podwire.identity.index import IdentityIndex, make_identity
from podwire.identity.inventory import InventoryError
from podwire.identity.kube import KubeAccessError, KubeSource
from podwire.identity.kubestore import KubeStore
from podwire.identity.naming import identity_json, name_connection
from podwire.identity.service import IdentityService, IdentityStats, build, build_service

__all__ = [
    "CidrTable",
    "ExternalNames",
    "IdentityIndex",
    "IdentityService",
    "IdentityStats",
    "InventoryError",
    "KubeAccessError",
    "KubeSource",
    "KubeStore",
    "build",
    "build_service",
    "identity_json",
    "make_identity",
    "name_connection",
]
