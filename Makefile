# podmeta — run `make help` for the targets.

K8S_VERSION ?= v1.37.2
HELM_VERSION ?= v4.3.1
IMAGE_REPO ?= ghcr.io/podmeta
ARCH ?= $(shell go env GOARCH)
KUBECTL ?= kubectl
GOLANGCI_LINT_VERSION ?= v2.15.0
# A count, not a duration: Go 1.26's fuzz coordinator can fail a run with a bare
# "context deadline exceeded" when a duration ends while a worker is mid-call on a busy
# machine (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
FUZZTIME ?= 20000x

BIN := $(CURDIR)/bin
K8S_BIN := $(BIN)/k8s/$(K8S_VERSION)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
IMAGE_TAG ?= $(VERSION)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Integration tests and the demo start kube-apiserver + etcd from here via envtest.
export KUBEBUILDER_ASSETS := $(K8S_BIN)

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "usage: make TARGET\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Main

.PHONY: demo
demo: build k8s ## Start a local control plane and podmeta, inject sample pods, print what each got.
	@hack/progress.sh "compiling the demo" go build -o $(BIN)/demo ./test/demo
	$(BIN)/demo

.PHONY: test
test: vet k8s $(BIN)/helm ## Run every test: engine goldens, CLI, fuzzing, integration on a real apiserver.
	@# -race: the handler, the Injector and the ambassador serve concurrent requests.
	go test -count=1 -race ./webhook/... ./policy/... ./cmd/... ./certs/... ./hack/...
	@# One control plane at a time: each package starts its own etcd + kube-apiserver,
	@# and two of them on two cores make each other's timing tests flaky.
	go test -count=1 -p 1 ./test/...
	# Minimizing a new input can take the whole budget with Go's 60 s default; keep it short.
	go test -count=1 -run '^$$' -fuzz '^FuzzPlan$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s ./webhook
	go test -count=1 -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s ./webhook

NODE_TEST_FLAGS ?=

.PHONY: test-node
test-node: k8s ## Run injected pods on a real kubelet + containerd in a private netns (root; apt-installs containerd, runc, CNI plugins). ~1 min, ~17 min with the token-rotation test; NODE_TEST_FLAGS=-test.short skips it.
	@bash hack/build-k8s.sh $(K8S_VERSION) $(K8S_BIN) kubelet
	bash hack/node/install.sh
	hack/node/run.sh -test.v $(NODE_TEST_FLAGS)

.PHONY: test-certs
test-certs: k8s ## Certificate tests only (self-managed rotation under load, cert-manager in-process).
	go test -count=1 -run Cert ./certs/ ./test/ ./test/certmanager/

##@ Development

.PHONY: build
build: ## Build bin/podmeta and bin/ambassador.
	CGO_ENABLED=0 hack/progress.sh "building podmeta" go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/podmeta ./cmd/podmeta
	CGO_ENABLED=0 hack/progress.sh "building ambassador" go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ambassador ./cmd/ambassador

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet and check formatting.
	@hack/progress.sh "go vet (compiles everything; minutes on a cold cache)" go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }

.PHONY: lint
lint: $(BIN)/golangci-lint ## Run golangci-lint (.golangci.yml).
	$(BIN)/golangci-lint run ./...

.PHONY: golden
golden: ## Rewrite the engine's golden files (review the diff!).
	go test ./webhook -run TestGolden -update

.PHONY: bench
bench: k8s ## Load benchmark (podmeta vs floor vs baseline, through the apiserver, overload) and microbenchmarks.
	go run ./test/bench/load
	@echo; echo "## Microbenchmarks (compare runs with benchstat)"; echo
	go test -run '^$$' -bench . -benchmem -count 6 ./webhook | tee $(BIN)/bench-micro.txt

.PHONY: soak
soak: k8s ## Hostile-input soak: one pinned replica's honest p99, patching and RSS while a hostile client attacks it (~2 min).
	go run ./test/bench/soak

##@ Deployment

.PHONY: image
image: ## Build the podmeta and ambassador images with Docker.
	docker build --target podmeta --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE_REPO)/podmeta:$(IMAGE_TAG) .
	docker build --target ambassador --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE_REPO)/ambassador:$(IMAGE_TAG) .

.PHONY: image-tar
image-tar: ## Build image tarballs without Docker into bin/images (docker load, kind load image-archive, ctr images import).
	@for cmd in podmeta ambassador; do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$(ARCH) go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/linux-$(ARCH)/$$cmd ./cmd/$$cmd || exit 1; \
	  go run ./hack/imagetar -binary $(BIN)/linux-$(ARCH)/$$cmd -arch $(ARCH) -tag $(IMAGE_REPO)/$$cmd:$(IMAGE_TAG) -o $(BIN)/images/$$cmd-$(ARCH).tar || exit 1; \
	done

.PHONY: deploy
deploy: ## Install podmeta with cert-manager into the current kubectl context (config/default).
	$(KUBECTL) apply -k config/default

.PHONY: undeploy
undeploy: ## Remove what make deploy installed.
	$(KUBECTL) delete -k config/default --ignore-not-found

RECORD_DIR ?= $(BIN)/admission-reviews

.PHONY: record-reviews
record-reviews: k8s ## Re-record the AdmissionReviews of webhook/testdata/admission-reviews into RECORD_DIR (bin/admission-reviews), to compare.
	go run ./hack/record-reviews -o $(RECORD_DIR)

.PHONY: chart-golden
chart-golden: ## Rewrite the Helm chart's golden renderings (review the diff!).
	go test ./test -run TestChartGolden -update-chart

.PHONY: chart-policy
chart-policy: ## Regenerate the chart's policy mode (charts/podmeta/templates/policy-mode.yaml) from podmeta policy.
	go run ./policy/chartgen

##@ Tools (cached in bin/)

.PHONY: helm
helm: $(BIN)/helm ## Install helm $(HELM_VERSION) into bin/.

$(BIN)/helm:
	GOBIN=$(BIN) hack/progress.sh "building helm" go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)


.PHONY: k8s
k8s: ## Build kube-apiserver, etcd and kubectl $(K8S_VERSION) from source into bin/k8s (minutes cold, instant after).
	@bash hack/build-k8s.sh $(K8S_VERSION) $(K8S_BIN) kube-apiserver etcd kubectl

$(BIN)/golangci-lint:
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
