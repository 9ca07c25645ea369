"""The node's pod veths, listed with netlink and listed again only after a link event (real
kernel: a mini-cluster node, a veth added and deleted beside its pods)."""

from __future__ import annotations

import time

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from podwire.demo.cluster import Cluster, call_in_netns
from podwire.sockstats.namespaces import NodeNetlink, PodLink


def test_pod_veths_are_listed_again_only_after_a_link_event(two_pod_cluster: Cluster) -> None:
    cluster = two_pod_cluster
    node = cluster.nodes[0]
    pods = {p.host_ifindex for p in cluster.pods}
    other = f"{cluster.prefix}-node-a-other"
    pyroute2_netns.create(other)
    try:

        def scenario() -> tuple[list[list[PodLink]], list[int], int]:
            seen: list[list[PodLink]] = []
            listings: list[int] = []
            netlink = NodeNetlink(cluster.host_veth_pattern)
            try:
                # let late events of the cluster's own set-up (carrier changes come up to a second
                # late) pass: wait for a quiet 0.5 s, with a deadline
                deadline = time.monotonic() + 15
                netlink.pod_links()
                while True:
                    before = netlink.listings
                    time.sleep(0.5)
                    netlink.pod_links()
                    if netlink.listings == before or time.monotonic() > deadline:
                        break
                for _ in range(3):  # nothing changes: no new listing
                    seen.append(netlink.pod_links())
                    listings.append(netlink.listings)
                with IPRoute() as ipr:
                    ipr.link(
                        "add",
                        ifname=f"{cluster.prefix}h97",
                        kind="veth",
                        peer={"ifname": "o0", "net_ns_fd": other},
                    )
                    (added,) = ipr.link_lookup(ifname=f"{cluster.prefix}h97")
                seen.append(netlink.pod_links())  # the new pod veth, at once
                listings.append(netlink.listings)
                with IPRoute() as ipr:
                    ipr.link("del", index=added)
                seen.append(netlink.pod_links())  # and gone
                listings.append(netlink.listings)
            finally:
                netlink.close()
            return seen, listings, added

        seen, listings, added = call_in_netns(node.netns, scenario)
        assert [{x.ifindex for x in links} for links in seen] == [pods] * 3 + [pods | {added}] + [pods]
        assert listings[0] == listings[1] == listings[2] < listings[3] < listings[4]
    finally:
        pyroute2_netns.remove(other)
