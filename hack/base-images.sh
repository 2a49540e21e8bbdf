#!/usr/bin/env bash
# Makes LOCAL STAND-INS for the base images our Dockerfiles name, under those exact names, in
# buildah's storage, for machines that cannot pull from a registry (no Docker Hub, no gcr.io):
#
#   docker.io/library/debian:12.11-slim       debootstrap --variant=minbase bookworm, trimmed like
#                                             the official slim image (no docs, man pages, apt lists)
#   docker.io/library/golang:1.26.8-bookworm  that Debian + ca-certificates + this machine's Go
#                                             toolchain (`go env GOROOT`), ENV as in the official
#                                             image, GOPROXY and GOFLAGS taken from this machine
#   gcr.io/distroless/static-debian12:nonroot no shell: ca-certificates, tzdata, /etc/passwd and
#                                             /etc/group (root, nobody, nonroot 65532),
#                                             /home/nonroot, /tmp 1777, USER 65532
#
# They are NOT the published images: they have the same names and what our builds rely on, so
# Dockerfile.agent, Dockerfile.webhook and test/images/testbin/Dockerfile build here unchanged.
# Where a registry is reachable, use the real images (docker/podman pull them; skip this script).
#
# Each carries the label dev.magic-ip.base-stand-in=<name> (images built on them inherit it).
# Built once: an image already present is kept (delete it with `buildah rmi NAME` to rebuild).
# Needs root, buildah, debootstrap, and http://deb.debian.org. Logs go to stderr.
#
#   hack/base-images.sh            make whichever stand-in is missing
#   DEBIAN_MIRROR=http://... hack/base-images.sh
set -euo pipefail

DEBIAN=docker.io/library/debian:12.11-slim
GOLANG=docker.io/library/golang:1.26.8-bookworm
DISTROLESS=gcr.io/distroless/static-debian12:nonroot
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "base-images: $*" >&2; }
have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# Containers made here are removed on exit, whatever happens. They are listed in a file, not a
# variable: new_container runs in a $(...) subshell.
made=$(mktemp)
cleanup() {
	local c
	while read -r c; do buildah rm "$c" >/dev/null 2>&1 || true; done <"$made"
	rm -f "$made"
}
trap cleanup EXIT
new_container() { # new_container IMAGE|scratch: prints the container's name
	local c
	c=$(buildah from --pull=never "$1")
	echo "$c" >>"$made"
	echo "$c"
}

# trim ROOTFS: what the official slim image leaves out, and what must not be baked in.
trim() {
	local r=$1
	rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
		"$r"/usr/share/lintian "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin \
		"$r"/var/cache/apt/archives/*.deb "$r"/var/cache/debconf/*-old "$r"/var/log/*.log \
		"$r"/var/log/apt/* "$r"/etc/hostname "$r"/etc/resolv.conf "$r"/tmp/* "$r"/root/.bash_history
	: >"$r/etc/machine-id"
	# Keep later installs slim too (debuerreotype's slim settings).
	cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/locale/*
		path-exclude /usr/share/lintian/*
	EOF
	cat >"$r/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
	rm -f "$r/etc/apt/sources.list"
	cat >"$r/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: $MIRROR
		Suites: $SUITE $SUITE-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: ${MIRROR%/debian}/debian-security
		Suites: $SUITE-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
}

make_debian() {
	local c mnt
	c=$(new_container scratch)
	mnt=$(buildah mount "$c")
	log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
	debootstrap --variant=minbase "$SUITE" "$mnt" "$MIRROR" >&2
	trim "$mnt"
	buildah umount "$c" >/dev/null
	buildah config --os linux --arch "$(go env GOARCH)" --env "$PATH_ENV" --cmd '["bash"]' \
		--label "dev.magic-ip.base-stand-in=$DEBIAN" "$c"
	buildah commit --quiet --rm "$c" "$DEBIAN" >/dev/null
}

# tools_container: the Debian stand-in with ca-certificates and tzdata, the source of the files
# the golang and distroless stand-ins need. Prints the container's name.
tools_container() {
	local c
	c=$(new_container "$DEBIAN")
	buildah run --network host "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends ca-certificates tzdata >/dev/null && rm -rf /var/lib/apt/lists/*' >&2
	echo "$c"
}

make_golang() {
	local c=$1 goroot want have_version
	goroot=$(go env GOROOT)
	want=go${GOLANG#*golang:}
	want=${want%-bookworm}
	have_version=$(go env GOVERSION)
	if [[ $have_version != "$want" ]]; then
		log "this machine's Go is $have_version; $GOLANG needs $want"
		return 1
	fi
	log "copying $goroot ($have_version) to /usr/local/go"
	buildah copy --quiet "$c" "$goroot" /usr/local/go >/dev/null
	buildah run "$c" -- sh -c 'mkdir -p /go/src /go/bin && chmod -R 1777 /go'
	# This machine's CA bundle: its way to the module proxy may go through a TLS proxy whose CA
	# Debian's bundle lacks (a fresh run failed "x509: certificate signed by unknown authority").
	if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
		buildah copy --quiet "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
	fi
	buildah config --env "PATH=/go/bin:/usr/local/go/bin:${PATH_ENV#PATH=}" --env "GOLANG_VERSION=${want#go}" \
		--env GOTOOLCHAIN=local --env GOPATH=/go --env "GOPROXY=$(go env GOPROXY)" --env "GOFLAGS=$(go env GOFLAGS)" \
		--workingdir /go --label "dev.magic-ip.base-stand-in=$GOLANG" "$c"
	buildah commit --quiet "$c" "$GOLANG" >/dev/null
}

# distroless_rootfs TOOLS DIR: fills DIR with what gcr.io/distroless/static-debian12 holds.
distroless_rootfs() {
	local src=$1 r=$2
	mkdir -p "$r"/etc/ssl/certs "$r"/usr/share "$r"/home/nonroot "$r"/root "$r"/tmp "$r"/var/lib/dpkg/status.d
	cp "$src/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
	cp -a "$src/usr/share/zoneinfo" "$r/usr/share/"
	sed -e 's/^PRETTY_NAME=.*/PRETTY_NAME="Distroless (local stand-in)"/' "$src/etc/os-release" >"$r/etc/os-release"
	cat >"$r/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/sbin/nologin
		nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
		nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
	EOF
	cat >"$r/etc/group" <<-'EOF'
		root:x:0:
		nobody:x:65534:
		tty:x:5:
		staff:x:50:
		nonroot:x:65532:
	EOF
	echo 'hosts: files dns' >"$r/etc/nsswitch.conf"
	chmod 0700 "$r/root" "$r/home/nonroot"
	chown 65532:65532 "$r/home/nonroot"
	chmod 1777 "$r/tmp"
}

make_distroless() {
	local tools=$1 c src dst
	c=$(new_container scratch)
	src=$(buildah mount "$tools")
	dst=$(buildah mount "$c")
	distroless_rootfs "$src" "$dst"
	buildah umount "$c" "$tools" >/dev/null
	buildah config --os linux --arch "$(go env GOARCH)" --env "$PATH_ENV" \
		--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --user 65532 --workingdir /home/nonroot \
		--label "dev.magic-ip.base-stand-in=$DISTROLESS" "$c"
	buildah commit --quiet --rm "$c" "$DISTROLESS" >/dev/null
}

main() {
	local start tools
	if have "$DEBIAN" && have "$GOLANG" && have "$DISTROLESS"; then
		return 0
	fi
	for tool in buildah debootstrap go; do
		command -v "$tool" >/dev/null || { log "$tool is not installed (make prereqs)"; exit 1; }
	done
	start=$(date +%s)
	if ! have "$DEBIAN"; then
		make_debian
		log "built $DEBIAN in $(($(date +%s) - start))s"
	fi
	if ! have "$GOLANG" || ! have "$DISTROLESS"; then
		tools=$(tools_container)
		if ! have "$DISTROLESS"; then
			make_distroless "$tools"
			log "built $DISTROLESS ($(($(date +%s) - start))s so far)"
		fi
		if ! have "$GOLANG"; then
			make_golang "$tools"
			log "built $GOLANG ($(($(date +%s) - start))s so far)"
		fi
	fi
	log "stand-ins ready in $(($(date +%s) - start))s"
}

main "$@"
