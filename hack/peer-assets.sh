#!/usr/bin/env bash
# Builds the benchmark peers — kube-proxy and kube-controller-manager (for its EndpointSlice
# controller) — from the same k8s.io/kubernetes version as the test control plane, into the same
# cache directory. Idempotent: when the stamp exists, it does nothing.
#
#   hack/peer-assets.sh          build if missing, print the directory
set -euo pipefail

K8S_VERSION=v1.37.2
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}
dir="$cache/bin/k8s/$K8S_VERSION"
stamp="$dir/.complete-peers-$K8S_VERSION"

if [[ -f $stamp ]]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
log() { echo "peer-assets: $*" >&2; }
command -v go >/dev/null || { log "go is not installed (need go 1.26): see https://go.dev/doc/install"; exit 1; }

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ver="k8s.io/component-base/version"
ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
start=$(date +%s)
log "building kube-proxy and kube-controller-manager $K8S_VERSION into $dir (cold: about 10 minutes on 2 cores; later runs: nothing)"
for cmd in kube-proxy kube-controller-manager; do
	t0=$(date +%s)
	(cd "$root/test/tools/k8s" && go build -trimpath -ldflags "$ldflags" -o "$dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
	mv "$dir/$cmd.tmp" "$dir/$cmd"
	log "built $cmd in $(($(date +%s) - t0))s"
done
"$dir/kube-proxy" --version >&2
touch "$stamp"
log "done in $(($(date +%s) - start))s"
echo "$dir"
