"""Suite-wide plugins. tests.peers: session fixtures for the Go-built real peers
(kube_api, helm_bin); they start nothing unless a test asks for them."""

pytest_plugins = ["tests.peers"]
