#!/usr/bin/env bash
# Builds what a real node of the test harness runs — kubelet (and kube-scheduler, next to the
# control plane), containerd with its runc shim and ctr, and the CNI plugins — from the Go module
# proxy into cache directories keyed by version, and prints ONE directory that links all of them:
#
#   <dir>/kubelet  kube-scheduler  containerd  containerd-shim-runc-v2  ctr  runc  cni/{bridge,host-local,loopback,portmap}
#
# runc is Debian's /usr/sbin/runc (hack/prereqs.sh installs it). Idempotent: each part has a stamp
# for its version, and a part whose stamp exists is not built again.
#
#   hack/node-assets.sh               build what is missing, print the node directory
#   ASSETS_CACHE=/path hack/node-assets.sh
set -euo pipefail

K8S_VERSION=v1.37.2
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.10.0
RUNC=${RUNC:-/usr/sbin/runc}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}
k8s="$cache/bin/k8s/$K8S_VERSION"
ctrd="$cache/bin/containerd/$CONTAINERD_VERSION"
cni="$cache/bin/cni-plugins/$CNI_PLUGINS_VERSION"
node="$cache/bin/node/k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-cni-$CNI_PLUGINS_VERSION"
stamp="$node/.complete"

if [[ -f $stamp ]]; then
	echo "$node"
	exit 0
fi
log() { echo "node-assets: $*" >&2; }
command -v go >/dev/null || { log "go is not installed (need go 1.26): see https://go.dev/doc/install"; exit 1; }
[[ -x $RUNC ]] || { log "$RUNC is missing: run hack/prereqs.sh (apt-get install runc)"; exit 1; }
# GOFLAGS from the caller (e.g. -mod=vendor) would not apply to the build-only modules.
export GOFLAGS=

# pinned <module dir> <module path> <version>: the build module must hold the version this script names.
pinned() {
	local have
	have=$(cd "$root/test/tools/$1" && go list -m -f '{{.Version}}' "$2")
	[[ $have == "$3" ]] || { log "test/tools/$1/go.mod has $2 $have, this script $3"; exit 1; }
}

# build <module dir> <package> <output> [ldflags]: into output.tmp, then renamed.
build() {
	local t0=$(date +%s)
	log "building $(basename "$3") (from $2) ..."
	(cd "$root/test/tools/$1" && go build -trimpath -ldflags "${4:--s -w}" -o "$3.tmp" "$2")
	mv "$3.tmp" "$3"
	log "built $(basename "$3") in $(($(date +%s) - t0))s"
}

build_k8s() {
	local s="$k8s/.complete-node-$K8S_VERSION" minor ver ldflags
	[[ -f $s ]] && return
	pinned k8s k8s.io/kubernetes "$K8S_VERSION"
	mkdir -p "$k8s"
	minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
	ver="k8s.io/component-base/version"
	ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
	build k8s k8s.io/kubernetes/cmd/kubelet "$k8s/kubelet" "$ldflags"
	build k8s k8s.io/kubernetes/cmd/kube-scheduler "$k8s/kube-scheduler" "$ldflags"
	"$k8s/kubelet" --version >&2
	touch "$s"
}

build_containerd() {
	local s="$ctrd/.complete-$CONTAINERD_VERSION" pkg=github.com/containerd/containerd/v2 ldflags
	[[ -f $s ]] && return
	pinned containerd "$pkg" "$CONTAINERD_VERSION"
	mkdir -p "$ctrd"
	ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
	for cmd in containerd containerd-shim-runc-v2 ctr; do
		CGO_ENABLED=0 build containerd "$pkg/cmd/$cmd" "$ctrd/$cmd" "$ldflags"
	done
	"$ctrd/containerd" --version >&2
	touch "$s"
}

build_cni() {
	local s="$cni/.complete-$CNI_PLUGINS_VERSION" pkg=github.com/containernetworking/plugins p
	[[ -f $s ]] && return
	pinned cni "$pkg" "$CNI_PLUGINS_VERSION"
	mkdir -p "$cni"
	for p in main/bridge ipam/host-local main/loopback meta/portmap; do
		CGO_ENABLED=0 build cni "$pkg/plugins/$p" "$cni/$(basename "$p")" \
			"-s -w -X $pkg/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
	done
	touch "$s"
}

# link_node: the one directory the harness is given, made of links into the per-version caches.
link_node() {
	local b
	rm -rf "$node"
	mkdir -p "$node/cni"
	for b in kubelet kube-scheduler; do ln -s "$k8s/$b" "$node/$b"; done
	for b in containerd containerd-shim-runc-v2 ctr; do ln -s "$ctrd/$b" "$node/$b"; done
	for b in bridge host-local loopback portmap; do ln -s "$cni/$b" "$node/cni/$b"; done
	ln -s "$RUNC" "$node/runc"
	touch "$stamp"
}

start=$(date +%s)
log "building the real-node binaries into $node (cold, after the control plane: about 7 minutes on 2 cores, containerd most of it; later runs: nothing)"
build_k8s
build_containerd
build_cni
link_node
log "done in $(($(date +%s) - start))s"
echo "$node"
