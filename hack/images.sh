#!/usr/bin/env bash
# Builds the container images from their Dockerfiles, as they are, and exports each to a
# docker-archive tar (what `ctr -n k8s.io images import` and `docker load` read):
#
#   agent.tar    $IMAGE_REPO/magic-ip-agent:$IMAGE_TAG    Dockerfile.agent
#   webhook.tar  $IMAGE_REPO/magic-ip-webhook:$IMAGE_TAG  Dockerfile.webhook
#   testbin.tar  localhost/magic-ip-test/testbin:$IMAGE_TAG  test/images/testbin/Dockerfile --target testbin
#   pause.tar    localhost/magic-ip-test/pause:$IMAGE_TAG    test/images/testbin/Dockerfile --target pause
#
# into ${ASSETS_CACHE:-~/.cache/magic-ip}/images/<hash of the inputs>/, with index.tsv
# ("<file>.tar<TAB><image ref>" per line), and prints that directory. The hash covers the
# Dockerfiles, the sources they copy, go.mod/go.sum, this script and hack/base-images.sh, the
# builder, the refs and the version stamps: a warm run prints the directory at once.
#
# Builder: docker or podman when its engine answers `info` (CONTAINER_ENGINE=docker|podman|buildah
# forces one), else buildah (daemonless, --pull=never) on the LOCAL STAND-INS of the base images
# that hack/base-images.sh makes (no registry is needed). With buildah and podman the RUN steps
# share this machine's Go module and build caches (read-write bind mounts; IMAGES_GO_CACHE=none
# turns that off): the images are the same, the builds faster.
#
#   hack/images.sh           all four images
#   hack/images.sh test      only testbin and pause (the real-node tests' own images)
#
# Environment: IMAGE_TAG (default e2e), IMAGE_REPO (default ghcr.io/magic-ip), VERSION (default
# $IMAGE_TAG), COMMIT and BUILD_DATE (default unknown): stamped into the binaries; ASSETS_CACHE.
# Logs (with timings) go to stderr; only the directory goes to stdout.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
TAG=${IMAGE_TAG:-e2e}
REPO=${IMAGE_REPO:-ghcr.io/magic-ip}
VERSION=${VERSION:-$TAG}
COMMIT=${COMMIT:-unknown}
BUILD_DATE=${BUILD_DATE:-unknown}
cache=${ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/magic-ip}/images

log() { echo "images: $*" >&2; }

# The images: name, Dockerfile, target stage ("-": the last), ignore file ("-": .dockerignore), ref.
images() {
	local t=test/images/testbin
	printf '%s\n' \
		"testbin $t/Dockerfile testbin $t/Dockerfile.dockerignore localhost/magic-ip-test/testbin:$TAG" \
		"pause $t/Dockerfile pause $t/Dockerfile.dockerignore localhost/magic-ip-test/pause:$TAG" \
		"agent Dockerfile.agent - - $REPO/magic-ip-agent:$TAG" \
		"webhook Dockerfile.webhook - - $REPO/magic-ip-webhook:$TAG"
}

case ${1:-all} in
all) wanted="testbin pause agent webhook" ;;
test) wanted="testbin pause" ;;
*)
	echo "usage: hack/images.sh [all|test]" >&2
	exit 2
	;;
esac

choose_engine() {
	local e
	if [[ -n ${CONTAINER_ENGINE:-} ]]; then
		echo "$CONTAINER_ENGINE"
		return
	fi
	for e in docker podman; do
		if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then
			echo "$e"
			return
		fi
	done
	echo buildah
}

# inputs ENGINE: everything the images depend on, one line each (hashed; kept as inputs.txt).
inputs() {
	echo "engine $1"
	echo "go $(go env GOVERSION)"
	echo "stamp $VERSION $COMMIT $BUILD_DATE"
	images
	grep -h '^FROM' Dockerfile.agent Dockerfile.webhook test/images/testbin/Dockerfile
	find go.mod go.sum .dockerignore Dockerfile.agent Dockerfile.webhook hack/images.sh hack/base-images.sh \
		hack/iptables-wrapper.sh agent api certs cmd internal webhook test/images/testbin \
		-type f ! -name '*_test.go' ! -path '*/testdata/*' -print0 | sort -z | xargs -0 sha256sum
}

# index DIR: writes DIR/index.tsv for the tars present.
index() {
	local name df target ignore ref
	: >"$1/index.tsv.tmp"
	while read -r name df target ignore ref; do
		if [[ -f $1/$name.tar ]]; then printf '%s.tar\t%s\n' "$name" "$ref" >>"$1/index.tsv.tmp"; fi
	done < <(images)
	mv "$1/index.tsv.tmp" "$1/index.tsv"
}

missing() { # missing DIR: the wanted images whose tar is not there yet
	local n out=""
	for n in $wanted; do [[ -f $1/$n.tar ]] || out+="$n "; done
	echo "$out"
}

# build ENGINE DIR NAME DOCKERFILE TARGET IGNOREFILE REF: builds one image and exports DIR/NAME.tar.
build() {
	local engine=$1 dir=$2 name=$3 df=$4 target=$5 ignore=$6 ref=$7 start old args
	start=$(date +%s)
	args=(-f "$df" -t "$ref" --build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" --build-arg "BUILD_DATE=$BUILD_DATE")
	[[ $target == - ]] || args+=(--target "$target")
	if [[ $engine != docker ]]; then
		[[ $ignore == - ]] || args+=(--ignorefile "$ignore")
		if [[ ${IMAGES_GO_CACHE:-host} == host ]]; then
			mkdir -p "$(go env GOMODCACHE)" "$(go env GOCACHE)"
			args+=(-v "$(go env GOMODCACHE):/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build")
			# The builder's `go mod download` then finds every module in the shared cache.
			go mod download >&2
		fi
	fi
	rm -f "$dir/$name.tar.tmp"
	case $engine in
	buildah)
		# buildah 1.28 leaves TARGETOS and TARGETARCH empty (docker and podman set them).
		args+=(--build-arg "TARGETOS=$(go env GOOS)" --build-arg "TARGETARCH=$(go env GOARCH)")
		buildah build --quiet --pull=never --network host "${args[@]}" . >&2
		buildah push --quiet "$ref" "docker-archive:$dir/$name.tar.tmp:$ref" >&2
		# The tar is the product: buildah's storage keeps only the base images (load the tar
		# with `buildah pull docker-archive:FILE` to push it somewhere).
		buildah rmi "$ref" >/dev/null
		;;
	podman)
		podman build "${args[@]}" . >&2
		podman save --format docker-archive -o "$dir/$name.tar.tmp" "$ref" >&2
		;;
	docker)
		docker build "${args[@]}" . >&2
		docker save -o "$dir/$name.tar.tmp" "$ref" >&2
		;;
	*)
		log "unknown CONTAINER_ENGINE $engine (want docker, podman or buildah)"
		return 1
		;;
	esac
	mv "$dir/$name.tar.tmp" "$dir/$name.tar"
	log "built $name ($ref) in $(($(date +%s) - start))s: $(du -h "$dir/$name.tar" | cut -f1)"
}

# prune: keeps the two most recent other builds, removes older ones.
prune() {
	local keep=$1 d n=0
	while read -r d; do
		[[ $d == "$keep" ]] && continue
		n=$((n + 1))
		if ((n > 2)); then rm -rf "$d"; fi
	done < <(ls -dt "$cache"/*/ 2>/dev/null | sed 's:/$::')
}

main() {
	local engine hash dir start name df target ignore ref
	command -v go >/dev/null || { log "go is not installed (need go 1.26)"; exit 1; }
	engine=$(choose_engine)
	hash=$(inputs "$engine" | sha256sum | cut -c1-16)
	dir=$cache/$hash
	if [[ -f $dir/index.tsv && -z $(missing "$dir") ]]; then
		echo "$dir"
		return
	fi
	mkdir -p "$dir"
	exec 9>"$cache/.lock"
	flock 9 # one build at a time on this machine; the one that waited then finds the tars
	if [[ -n $(missing "$dir") ]]; then
		start=$(date +%s)
		inputs "$engine" >"$dir/inputs.txt"
		log "building $(missing "$dir")with $engine into $dir"
		if [[ $engine == buildah ]]; then
			hack/base-images.sh
		fi
		while read -r name df target ignore ref; do
			[[ " $(missing "$dir") " == *" $name "* ]] || continue
			build "$engine" "$dir" "$name" "$df" "$target" "$ignore" "$ref"
		done < <(images)
		log "all built in $(($(date +%s) - start))s"
	fi
	index "$dir"
	prune "$dir"
	echo "$dir"
}

main "$@"
