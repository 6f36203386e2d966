# The project's entry points. `make setup` then `make test` is all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup test test-chart test-datastore test-cluster test-e2e lint bench e2e docs control-plane-up control-plane-down datastore-up datastore-down kind-up tilt-up tilt-down clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup: ## Install Debian packages, .venv and the Go-built tools in .bin/ (idempotent)
	hack/setup.sh

test: ## Run every test tier that can run here and print per-tier counts
	hack/run-tests.sh

test-chart: ## Render tests only (helm template, no cluster)
	hack/run-tests.sh chart

test-datastore: ## Real PostgreSQL with TLS: schema, change streams, the store client
	hack/run-tests.sh datastore

test-cluster: ## A real API server (local control plane, or KUBECONFIG): install, upgrade, uninstall
	hack/run-tests.sh cluster

test-e2e: ## Pods on kind (skips without a container engine)
	hack/run-tests.sh e2e

lint: ## ruff, mypy (--strict outside tests/), shellcheck, shfmt -d, helm lint --strict, generated docs current
	hack/lint.sh

bench: ## Benchmarks (change streams, migration); writes docs/benchmarks.md and docs/benchmarks-migration.md
	.venv/bin/python -m bench.changestream --write docs/benchmarks.md
	.venv/bin/python -m bench.migrate --write docs/benchmarks-migration.md

e2e: ## Create a kind cluster and run the end-to-end suite (needs Docker)
	hack/e2e.sh

docs: ## Regenerate the chart README values table, values.schema.json and docs/postgresql-schema.sql
	.venv/bin/python hack/gen-chart-readme.py
	.venv/bin/python hack/gen-values-schema.py
	hack/gen-schema-doc.sh

control-plane-up: ## Start etcd, kube-apiserver and kube-controller-manager on loopback
	hack/control-plane.sh up

control-plane-down: ## Stop the local control plane and remove its state
	hack/control-plane.sh down

datastore-up: ## Start a local PostgreSQL configured as the chart configures it
	hack/local-datastore.sh up

datastore-down: ## Stop the local PostgreSQL
	hack/local-datastore.sh down

kind-up: ## Create the kind cluster 'nvsentinel' for tilt up (needs Docker)
	.bin/kind create cluster --name nvsentinel --config hack/kind-config.yaml

tilt-up: ## Start Tilt on the current kind cluster (USE_POSTGRESQL=1 for PostgreSQL)
	PATH="$(CURDIR)/.bin:$$PATH" tilt up

tilt-down: ## Remove what tilt up deployed
	PATH="$(CURDIR)/.bin:$$PATH" tilt down

clean: ## Remove test reports and local state (keeps .venv and .bin)
	rm -rf test-reports .state e2e-artifacts
