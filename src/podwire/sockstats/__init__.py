"""sockstats room: what the kernel knows about sockets and connections, beside capture.

diag.py, namespaces.py, sampler.py  sock_diag per pod network namespace (live bytes, RTT, retransmits)
conntrack.py                        the backend a Service's DNAT chose, from the node's conntrack table
"""
