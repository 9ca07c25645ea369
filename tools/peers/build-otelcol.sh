#!/usr/bin/env bash
# Build the podwire OpenTelemetry Collector distribution (otel/builder-config.yaml)
# with the official OpenTelemetry Collector Builder from the Go module proxy.
#
#   tools/peers/build-otelcol.sh           build if needed, print the binary's path
#   tools/peers/build-otelcol.sh --check   print the path if built and current, else exit 1
#
# Output: ${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}/otelcol-<version>/otelcol-podwire,
# printed as one absolute path on stdout (build logs go to stderr). The build is
# skipped when the stamp file matches the hash of its inputs (manifest, builder
# version, Go version), so warm runs are instant. Concurrent callers are
# serialised with flock.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${PODWIRE_PEERS_CACHE:-/var/cache/podwire-peers}"
MANIFEST="$ROOT/otel/builder-config.yaml"

# One release for the builder, core and contrib. Bump together with the manifest.
OTELCOL_VERSION="v0.165.0"
BUILDER_MODULE="go.opentelemetry.io/collector/cmd/builder"

# Never fetch another Go toolchain; a static binary runs anywhere.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

dir="$CACHE/otelcol-$OTELCOL_VERSION"
bin="$dir/otelcol-podwire"
stamp="$dir/.stamp"

inputs_hash() {
    {
        cat "$MANIFEST"
        echo "$BUILDER_MODULE@$OTELCOL_VERSION"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$bin"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "podwire-peers: otelcol-podwire $OTELCOL_VERSION is not built (run $0)" >&2
    exit 1
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
echo "podwire-peers: building otelcol-podwire $OTELCOL_VERSION -> $bin" >&2

# The builder itself, pinned, installed beside the output (not in GOPATH/bin).
GOBIN="$dir/.tools" go install "$BUILDER_MODULE@$OTELCOL_VERSION" >&2

# The builder writes the generated sources under output_path, resolved against
# its working directory: build in a scratch dir inside the cache.
work="$dir/src"
rm -rf "$work"
mkdir -p "$work"
cp "$MANIFEST" "$work/builder-config.yaml"
(
    cd "$work"
    "$dir/.tools/builder" --config=builder-config.yaml
) >&2 || { echo "podwire-peers: otelcol build failed (sources in $work)" >&2; exit 1; }

mv -f "$work/_build/otelcol-podwire" "$bin"
# The stamp is written last, only after a successful build.
echo "$want" > "$stamp"
echo "podwire-peers: built otelcol-podwire in $((SECONDS - started))s" >&2
echo "$bin"
