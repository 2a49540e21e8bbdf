#!/usr/bin/env bash
# Builds helm from the Go module proxy into a cache directory keyed by version, used by
# `make test` (exported as HELM) to render manifests/helm/magic-ip.
# Idempotent: when the binary for this version exists, it does nothing.
#
#   hack/helm.sh                      build if missing, print the path of the helm binary
#   ASSETS_CACHE=/path hack/helm.sh
set -euo pipefail

HELM_VERSION=v3.22.0
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}
dir="$cache/bin/helm/$HELM_VERSION"
bin="$dir/helm"

if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi
log() { echo "helm: $*" >&2; }
command -v go >/dev/null || { log "go is not installed (need go 1.26): see https://go.dev/doc/install"; exit 1; }

start=$(date +%s)
log "building helm $HELM_VERSION into $dir (cold: 3-7 minutes on 2 cores, most of it compiling; later runs: nothing)"
mkdir -p "$dir"
# Build into a scratch GOBIN so an interrupted build never leaves a half-written binary at $bin.
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# GOFLAGS from the caller (e.g. -mod=vendor) would not apply to a module outside this repository.
export GOFLAGS=
# Stamp what helm's own Makefile stamps: its version, and the Kubernetes version of its client-go
# (helm template's default .Capabilities.KubeVersion and helm lint's deprecation checks; unstamped
# they say v1.20).
gomod=$(cd "$tmp" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
clientgo=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod") # v0.37.0 -> Kubernetes 1.37
[[ $clientgo =~ ^v0\.([0-9]+)\. ]] || { log "cannot find k8s.io/client-go in $gomod"; exit 1; }
k8s_minor=${BASH_REMATCH[1]}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
	ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
(cd "$tmp" && GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
mv "$tmp/helm" "$bin"
"$bin" version --short >&2
log "done in $(($(date +%s) - start))s"
echo "$bin"
