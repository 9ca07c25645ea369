#!/usr/bin/env bash
# One-shot set-up on a fresh Debian 12 machine (run as root):
#   scripts/setup.sh          runtime: Debian packages + .venv with podwire   (enough for `podwire demo`)
#   scripts/setup.sh --test   also test tools and the Go-built real peers (kube-apiserver, etcd, helm, otelcol, jaeger),
#                             cached outside the clone in ${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

runtime_pkgs=(libpcap0.8 iproute2 nftables nginx-light curl python3-venv)
test_pkgs=(tshark tcpdump prometheus ca-certificates chromium podman runc netavark debootstrap iperf3)  # tshark: the oracle; prometheus: promtool and PromQL checks; chromium: the live page (tests/views); podman, runc, netavark, debootstrap: the image built and run (tests/shipping/test_image.py); iperf3: benchmarks/run's bulk row

need=()
for p in "${runtime_pkgs[@]}" $([ $want_test = 1 ] && echo "${test_pkgs[@]}"); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # tshark asks whether non-root users may capture; answer once, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ $want_test = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
  bash tools/peers/build.sh
  [ -f tools/peers/build-otelcol.sh ] && bash tools/peers/build-otelcol.sh
  bash tools/peers/build-jaeger.sh  # the real trace backend of tests/shipping/test_live_demo_jaeger.py
  bash scripts/build-image.sh --base  # the image's stand-in base, cached like the peers (tests/shipping/test_image.py)
else
  .venv/bin/python -m pip install -q -e .
fi
echo "podwire set-up done"
