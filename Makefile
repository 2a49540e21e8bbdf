# magic-ip — `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/magic-ip
export ASSETS_CACHE := $(CACHE)
CONTROLLER_GEN_VERSION := v0.23.0
CONTROLLER_GEN := $(CACHE)/bin/controller-gen-$(CONTROLLER_GEN_VERSION)
export CONTROLLER_GEN
GO_TEST_FLAGS ?=
CRD_DIR := manifests/crd

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Version stamped into the binaries and images (internal/version, `--version`).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := github.com/magic-ip/magic-ip/internal/version
LDFLAGS = -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT) -X $(VERSION_PKG).BuildDate=$(BUILD_DATE)

.PHONY: build
build: ## Build magic-ip-agent, magic-ip-webhook and the kubectl plugin kubectl-magic_ip into bin/ (version from git describe).
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

IMAGE_REPO ?= ghcr.io/magic-ip
IMAGE_TAG ?= $(VERSION)
# CONTAINER_ENGINE=docker|podman|buildah forces one; by default docker or podman when its engine
# answers `info` (a docker CLI without a daemon does not count), else buildah.
CONTAINER_ENGINE ?=
# The images are stamped with the commit's date, not the time of the build, so that rebuilding
# the same commit finds them in the cache.
IMAGES_BUILD_DATE ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)

.PHONY: images
images: ## Build the agent, webhook and test images from their Dockerfiles into docker-archive tars (hack/images.sh; buildah on local stand-ins of the base images when no docker/podman engine runs; cached).
	@dir=$$(IMAGE_TAG=$(IMAGE_TAG) IMAGE_REPO=$(IMAGE_REPO) VERSION=$(VERSION) COMMIT=$(COMMIT) \
		BUILD_DATE=$(IMAGES_BUILD_DATE) CONTAINER_ENGINE=$(CONTAINER_ENGINE) hack/images.sh); \
	echo "images (docker-archive tars) in $$dir:"; \
	sed 's/^/  /' "$$dir/index.tsv"

.PHONY: test-images
test-images: prereqs ## Build the images the real-node tests run (agent, webhook, testbin, pause; tag e2e; cached by content).
	@env -u VERSION -u COMMIT -u BUILD_DATE -u IMAGE_REPO IMAGE_TAG=e2e hack/images.sh all >/dev/null

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the MagicIP and MagicIPNode CRDs into manifests/crd and the chart's crds/ (its one source, also for crds.managed=true).
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=$(CRD_DIR)
	cp $(CRD_DIR)/magic-ip.dev_magicips.yaml $(CRD_DIR)/magic-ip.dev_magicipnodes.yaml manifests/helm/magic-ip/crds/

$(CONTROLLER_GEN): test/tools/codegen/go.mod
	mkdir -p $(dir $@)
	cd test/tools/codegen && go build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver, etcd and kubectl for tests (cached by version; ~6 min cold).
	@hack/envtest-assets.sh >/dev/null

.PHONY: peer-assets
peer-assets: ## Build kube-proxy and kube-controller-manager, the benchmark peers, next to the control plane (cached by version; ~10 min cold).
	@hack/peer-assets.sh >/dev/null

.PHONY: node-assets
node-assets: ## Build kubelet + kube-scheduler, containerd + shim + ctr and the CNI plugins for the real-node tests (cached by version; ~7 min cold).
	@hack/node-assets.sh >/dev/null

.PHONY: helm
helm: ## Build helm v3.22.0 for the chart tests (cached by version; 3-7 min cold).
	@hack/helm.sh >/dev/null

.PHONY: certmanager-assets
certmanager-assets: ## Build cert-manager's controller and cainjector and copy its CRDs for tests (cached by version; 1.5-8 min cold).
	@hack/certmanager-assets.sh >/dev/null

.PHONY: prereqs
prereqs: ## Install the system packages tests and the demo need (apt: iptables, iproute2, ...).
	@hack/prereqs.sh

.PHONY: test
test: prereqs envtest-assets peer-assets certmanager-assets helm node-assets test-images $(CONTROLLER_GEN) ## Run unit and end-to-end tests (needs root for the e2e part), the demo once, and the benchmarks once in quick form.
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) CERT_MANAGER_ASSETS=$$(hack/certmanager-assets.sh) HELM=$$(hack/helm.sh) MAGIC_IP_NODE_ASSETS=$$(hack/node-assets.sh) go test -count=1 -p 1 -timeout 60m $(GO_TEST_FLAGS) ./...
	@echo "--- benchmarks, quick form (figures are rough; this only proves they run)"
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) go test -count=1 -timeout 20m ./test/bench -run '^$$' -bench . -benchtime 1x -args -quick

DEMO_STATE ?= $(CACHE)/demo
.PHONY: demo
NODES ?= simulated
KUBE_PROXY ?= iptables
DEMO_ARGS := $(if $(filter real,$(NODES)),-real -kube-proxy-mode=$(KUBE_PROXY))
demo: prereqs envtest-assets $(if $(filter real,$(NODES)),peer-assets node-assets test-images certmanager-assets helm) ## Run magic-ip on a local simulated cluster (root); NODES=real: on two real nodes from our images and chart (KUBE_PROXY=nftables: kube-proxy in nftables mode there). KEEP=1 leaves it up until `make demo-down`.
	@mkdir -p bin $(DEMO_STATE)
	go build -o bin/demo ./test/demo
ifdef KEEP
	@rm -f $(DEMO_STATE)/ready $(DEMO_STATE)/pid
	@nohup bin/demo $(DEMO_ARGS) -keep -ready-file $(DEMO_STATE)/ready > $(DEMO_STATE)/demo.log 2>&1 & echo $$! > $(DEMO_STATE)/pid
	@while [ ! -f $(DEMO_STATE)/ready ]; do \
		if ! kill -0 $$(cat $(DEMO_STATE)/pid) 2>/dev/null; then cat $(DEMO_STATE)/demo.log; echo "demo failed"; exit 1; fi; \
		sleep 0.5; done
	@cat $(DEMO_STATE)/demo.log
	@echo "(log: $(DEMO_STATE)/demo.log)"
else
	bin/demo $(DEMO_ARGS)
endif

.PHONY: demo-down
demo-down: ## Stop a demo started with `make demo KEEP=1` and clean everything up.
	@if [ -f $(DEMO_STATE)/pid ] && kill -0 $$(cat $(DEMO_STATE)/pid) 2>/dev/null; then \
		pid=$$(cat $(DEMO_STATE)/pid); kill -TERM $$pid; \
		while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; \
		tail -n 3 $(DEMO_STATE)/demo.log; \
	else echo "no demo running"; fi
	@rm -f $(DEMO_STATE)/pid $(DEMO_STATE)/ready

BENCH_OUT ?= bench-results
.PHONY: bench
bench: prereqs envtest-assets peer-assets ## Measure convergence, sync cost and memory; QUICK=1 for a short run. Writes $(BENCH_OUT)/results.{md,json}.
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) go test -count=1 -timeout 60m ./test/bench -run '^$$' -bench . -benchtime 1x \
		-args -out $(abspath $(BENCH_OUT)) $(if $(QUICK),-quick)
	@echo "--- the webhook's cost per admission request in process (magic-ip vs a no-op handler, no TLS or network)"
	go test -count=1 ./webhook -run '^$$' -bench ServeHTTP -benchmem $(if $(QUICK),-benchtime 200x)

.PHONY: verify
verify: $(CONTROLLER_GEN) ## gofmt, go vet, and generated files up to date.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	go vet ./...
	go test -count=1 -run TestGeneratedFilesUpToDate ./api/...
	go test -count=1 -run TestHelmCRDIsTheGeneratedOne ./test/harness
