#!/usr/bin/env bash
# Builds a cert-manager controller and cainjector (test/tools/certmanager: small mains over
# cert-manager's public packages) and copies cert-manager's CRDs, into a cache directory keyed by
# version, for the e2e tests that issue the webhook's TLS with the real cert-manager.
# Idempotent: when the stamp for this version exists, it does nothing.
#
#   hack/certmanager-assets.sh            build if missing, print the asset directory
#   ASSETS_CACHE=/path hack/certmanager-assets.sh
#
# The directory holds cert-manager-controller, cert-manager-cainjector and crds/*.yaml.
set -euo pipefail

CERT_MANAGER_VERSION=v1.21.2
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}
dir="$cache/bin/cert-manager/$CERT_MANAGER_VERSION"
stamp="$dir/.complete-$CERT_MANAGER_VERSION"
tools="$root/test/tools/certmanager"

if [[ -f $stamp ]]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
log() { echo "certmanager-assets: $*" >&2; }
command -v go >/dev/null || { log "go is not installed (need go 1.26): see https://go.dev/doc/install"; exit 1; }

have=$(cd "$tools" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)
[[ $have == "$CERT_MANAGER_VERSION" ]] || { log "test/tools/certmanager/go.mod has cert-manager $have, this script $CERT_MANAGER_VERSION"; exit 1; }

start=$(date +%s)
build() { # package output
	local t0=$(date +%s)
	log "building $2 ..."
	(cd "$tools" && go build -trimpath -ldflags "-s -w" -o "$dir/$2.tmp" "$1")
	mv "$dir/$2.tmp" "$dir/$2"
	log "built $2 in $(($(date +%s) - t0))s"
}

log "building cert-manager $CERT_MANAGER_VERSION into $dir (cold: 1.5-8 minutes on 2 cores, depending on load; later runs: nothing)"
build ./controller cert-manager-controller
build ./cainjector cert-manager-cainjector
mod=$(cd "$tools" && go mod download -json github.com/cert-manager/cert-manager >/dev/null && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
rm -rf "$dir/crds"
mkdir -p "$dir/crds"
cp "$mod"/deploy/crds/*.yaml "$dir/crds/"
chmod u+w "$dir"/crds/*.yaml # copies of the read-only module cache
log "copied $(ls "$dir/crds" | wc -l) CRDs from $mod/deploy/crds"
touch "$stamp"
log "done in $(($(date +%s) - start))s"
echo "$dir"
