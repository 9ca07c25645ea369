#!/usr/bin/env bash
# Build the real Go peers podwire's tests run against (kube-apiserver, etcd, helm)
# from pinned module versions, into a cache outside the repo keyed by version.
#
#   tools/peers/build.sh [--check] [kube-apiserver|etcd|helm ...]   (no args = all)
#
# --check builds nothing: it prints the paths and exits 0 only if every requested
# peer is already built (stamp present), else exits 3. Needs no Go toolchain.
#
# Prints one absolute binary path per requested name on stdout (build logs go to
# stderr). A peer is rebuilt only if its stamp file is missing or does not match
# the hash of its build inputs (go.mod, go.sum, flags), so warm runs are instant.
# Each build module in tools/peers/<name>/ has a checked-in go.sum; builds run
# with -mod=readonly so CI never re-resolves versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}"

# Pinned versions. Bump here and in tools/peers/<name>/go.mod together.
KUBE_VERSION="v1.36.3"   # k8s.io/kubernetes; staging modules pinned to v0.36.3
ETCD_VERSION="v3.6.16"   # go.etcd.io/etcd/server/v3; newest 3.6 patch (k8s v1.36 targets etcd 3.6)
HELM_VERSION="v3.22.0"   # helm.sh/helm/v3

# Never fetch another Go toolchain: the go.mod files ask for go 1.26.0.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

peer_version() {
    case "$1" in
        kube-apiserver) echo "$KUBE_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        helm) echo "$HELM_VERSION" ;;
        *) echo "unknown peer: $1 (want kube-apiserver, etcd or helm)" >&2; return 2 ;;
    esac
}

peer_package() {
    case "$1" in
        kube-apiserver) echo "k8s.io/kubernetes/cmd/kube-apiserver" ;;
        etcd) echo "go.etcd.io/etcd/server/v3" ;;
        helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    esac
}

peer_ldflags() {
    # -s -w strips symbols; -X stamps the real version so /version and
    # `helm version` report it (default builds say v0.0.0-master / dev).
    local kv minor
    case "$1" in
        kube-apiserver)
            kv="${KUBE_VERSION#v}"; minor="${kv#*.}"; minor="${minor%%.*}"
            local p=k8s.io/component-base/version
            echo "-s -w -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
            ;;
        etcd) echo "-s -w" ;;
        helm) echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
    esac
}

inputs_hash() {
    local name="$1" mod="$HERE/$1"
    {
        cat "$mod/go.mod" "$mod/go.sum"
        peer_package "$name"
        peer_ldflags "$name"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -d' ' -f1
}

build_one() {
    local name="$1" version dir bin stamp want tmp started
    version="$(peer_version "$name")"
    dir="$CACHE/$name-$version"
    bin="$dir/$name"
    stamp="$dir/.stamp"
    want="$(inputs_hash "$name")"
    if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "$bin"
        return 0
    fi
    mkdir -p "$dir"
    # Serialise concurrent builders (parallel pytest sessions) per peer.
    exec {lock}>"$dir/.lock"
    flock "$lock"
    if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        flock -u "$lock"
        echo "$bin"
        return 0
    fi
    rm -f "$stamp"
    tmp="$dir/.$name.tmp.$$"
    started=$SECONDS
    echo "podwire-peers: building $name $version -> $bin" >&2
    (
        cd "$HERE/$name"
        go build -mod=readonly -trimpath -ldflags="$(peer_ldflags "$name")" -o "$tmp" "$(peer_package "$name")"
    ) >&2 || { rm -f "$tmp"; flock -u "$lock"; echo "podwire-peers: build of $name failed" >&2; return 1; }
    mv -f "$tmp" "$bin"
    # The stamp is written last, only after a successful build.
    echo "$want" > "$stamp"
    echo "podwire-peers: built $name in $((SECONDS - started))s" >&2
    flock -u "$lock"
    echo "$bin"
}

check_one() {
    local name="$1" dir
    dir="$CACHE/$name-$(peer_version "$name")"
    [[ -x "$dir/$name" && -s "$dir/.stamp" ]] || { echo "podwire-peers: $name not built in $dir" >&2; return 3; }
    echo "$dir/$name"
}

require_go() {
    # The build modules say `go 1.26.0` and GOTOOLCHAIN=local forbids fetching a newer one.
    local v
    command -v go > /dev/null || { echo "podwire-peers: go not on PATH (need Go >= 1.26)" >&2; exit 4; }
    v="$(go env GOVERSION)"
    v="${v#go}"
    local major="${v%%.*}" rest="${v#*.}"
    local minor="${rest%%[.a-z]*}"
    if (( major < 1 || (major == 1 && minor < 26) )); then
        echo "podwire-peers: Go $v is too old (need >= 1.26)" >&2
        exit 4
    fi
}

main() {
    local check=0
    if [[ "${1:-}" == "--check" ]]; then
        check=1
        shift
    fi
    local names=("$@")
    if [[ ${#names[@]} -eq 0 ]]; then
        names=(kube-apiserver etcd helm)
    fi
    local n
    for n in "${names[@]}"; do
        peer_version "$n" > /dev/null
    done
    [[ $check -eq 1 ]] || require_go
    for n in "${names[@]}"; do
        if [[ $check -eq 1 ]]; then
            check_one "$n"
        else
            build_one "$n"
        fi
    done
}

main "$@"
