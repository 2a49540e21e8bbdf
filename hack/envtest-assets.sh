#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kubectl, etcd) from the Go module proxy into a
# cache directory keyed by version, shared by `make test`, `make demo` and `make bench`.
# Idempotent: when the stamp for these versions exists, it does nothing.
#
#   hack/envtest-assets.sh            build if missing, print the asset directory
#   ASSETS_CACHE=/path hack/envtest-assets.sh
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}
dir="$cache/bin/k8s/$K8S_VERSION"
stamp="$dir/.complete-$K8S_VERSION-etcd-$ETCD_VERSION"

if [[ -f $stamp ]]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
log() { echo "envtest-assets: $*" >&2; }
command -v go >/dev/null || { log "go is not installed (need go 1.26): see https://go.dev/doc/install"; exit 1; }

start=$(date +%s)
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ver="k8s.io/component-base/version"
ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"

build() { # module-dir package output
	local t0=$(date +%s)
	log "building $3 (from $2) ..."
	(cd "$root/test/tools/$1" && go build -trimpath -ldflags "$ldflags" -o "$dir/$3.tmp" "$2")
	mv "$dir/$3.tmp" "$dir/$3"
	log "built $3 in $(($(date +%s) - t0))s"
}

log "building the test control plane into $dir (cold: about 6 minutes on 2 cores; later runs: nothing)"
build etcd go.etcd.io/etcd/server/v3 etcd
build k8s k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build k8s k8s.io/kubernetes/cmd/kubectl kubectl
"$dir/kube-apiserver" --version >&2
"$dir/etcd" --version | head -1 >&2
touch "$stamp"
log "done in $(($(date +%s) - start))s"
echo "$dir"
