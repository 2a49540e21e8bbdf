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

.PHONY: build
build: ## Build magic-ip-agent and magic-ip-webhook into bin/.
	go build -o bin/ ./cmd/...

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the MagicIP CRD into manifests/crd.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=$(CRD_DIR)

$(CONTROLLER_GEN): test/tools/codegen/go.mod
	mkdir -p $(dir $@)
	cd test/tools/codegen && go build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver, etcd and kubectl for tests (cached by version; ~6 min cold).
	@hack/envtest-assets.sh >/dev/null

.PHONY: prereqs
prereqs: ## Install the system packages tests and the demo need (apt: iptables, iproute2, ...).
	@hack/prereqs.sh

.PHONY: test
test: prereqs envtest-assets $(CONTROLLER_GEN) ## Run unit and end-to-end tests (needs root for the e2e part), the demo once, and the benchmarks once in quick form.
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) go test -count=1 -p 1 -timeout 60m $(GO_TEST_FLAGS) ./...
	@echo "--- benchmarks, quick form (figures are rough; this only proves they run)"
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) go test -count=1 -timeout 20m ./test/bench -run '^$$' -bench . -benchtime 1x -args -quick

DEMO_STATE ?= $(CACHE)/demo
.PHONY: demo
demo: prereqs envtest-assets ## Run magic-ip on a local simulated cluster (root). KEEP=1 leaves it up until `make demo-down`.
	@mkdir -p bin $(DEMO_STATE)
	go build -o bin/demo ./test/demo
ifdef KEEP
	@rm -f $(DEMO_STATE)/ready $(DEMO_STATE)/pid
	@nohup bin/demo -keep -ready-file $(DEMO_STATE)/ready > $(DEMO_STATE)/demo.log 2>&1 & echo $$! > $(DEMO_STATE)/pid
	@while [ ! -f $(DEMO_STATE)/ready ]; do \
		if ! kill -0 $$(cat $(DEMO_STATE)/pid) 2>/dev/null; then cat $(DEMO_STATE)/demo.log; echo "demo failed"; exit 1; fi; \
		sleep 0.5; done
	@cat $(DEMO_STATE)/demo.log
	@echo "(log: $(DEMO_STATE)/demo.log)"
else
	bin/demo
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
bench: prereqs envtest-assets ## Measure convergence, sync cost and memory; QUICK=1 for a short run. Writes $(BENCH_OUT)/results.{md,json}.
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) go test -count=1 -timeout 30m ./test/bench -run '^$$' -bench . -benchtime 1x \
		-args -out $(abspath $(BENCH_OUT)) $(if $(QUICK),-quick)

.PHONY: verify
verify: $(CONTROLLER_GEN) ## gofmt, go vet, and generated files up to date.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	go vet ./...
	go test -count=1 -run TestGeneratedFilesUpToDate ./api/...
