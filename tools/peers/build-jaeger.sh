#!/usr/bin/env bash
# Build Jaeger (the real trace backend of the end-to-end trace test) from the Go module proxy.
#
#   tools/peers/build-jaeger.sh           build if needed, print the binary's path
#   tools/peers/build-jaeger.sh --check   print the path if built and current, else exit 1
#
# `go install github.com/jaegertracing/jaeger/cmd/jaeger@VERSION` refuses the module's replace
# directives, so the module is downloaded (`go mod download`, checked against the checksum
# database like any module) and `./cmd/jaeger` is built from that module copy, as its own main
# module, with its own go.mod and go.sum (-mod=readonly: nothing is re-resolved).
#
# Output: ${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}/jaeger-<version>/jaeger, printed as
# one absolute path on stdout (build logs go to stderr). Skipped when the stamp matches the hash
# of its inputs (version, Go version); concurrent callers are serialised with flock.
set -euo pipefail

CACHE="${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}"
JAEGER_VERSION="v1.76.0"
JAEGER_MODULE="github.com/jaegertracing/jaeger"

# Never fetch another Go toolchain; a static binary runs anywhere.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

dir="$CACHE/jaeger-$JAEGER_VERSION"
bin="$dir/jaeger"
stamp="$dir/.stamp"

inputs_hash() {
    {
        echo "$JAEGER_MODULE@$JAEGER_VERSION ./cmd/jaeger -trimpath -s -w"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -d' ' -f1
}

if [[ "${1:-}" == "--check" ]]; then
    if [[ -x "$bin" && -s "$stamp" ]]; then
        echo "$bin"
        exit 0
    fi
    echo "podwire-peers: jaeger $JAEGER_VERSION is not built (run $0)" >&2
    exit 1
fi
command -v go > /dev/null || { echo "podwire-peers: go not on PATH (need Go >= 1.26)" >&2; exit 4; }

want="$(inputs_hash)"
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$dir"
exec {lock}>"$dir/.lock"
flock "$lock"
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
started=$SECONDS
echo "podwire-peers: building jaeger $JAEGER_VERSION -> $bin" >&2

# The module copy (read-only, in GOMODCACHE); its directory is printed by -json.
src="$(go mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -n "$src" && -f "$src/go.mod" ]] || { echo "podwire-peers: go mod download of jaeger failed" >&2; exit 1; }
tmp="$dir/.jaeger.tmp.$$"
(
    cd "$src"
    go build -mod=readonly -trimpath -ldflags="-s -w" -o "$tmp" ./cmd/jaeger
) >&2 || { rm -f "$tmp"; echo "podwire-peers: jaeger build failed" >&2; exit 1; }
mv -f "$tmp" "$bin"
# The stamp is written last, only after a successful build.
echo "$want" > "$stamp"
echo "podwire-peers: built jaeger in $((SECONDS - started))s" >&2
echo "$bin"
