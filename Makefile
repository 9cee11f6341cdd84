# openemr-operator — developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/openemr-operator

.PHONY: build crds lint unit test test-dev bench bench-documents bench-backups prepare controlplane moto linters mariadb dev-up dev-down demo demo-down clean

build:
	$(CARGO) build

## crds: regenerate crds/ from the API types (a test fails when they differ).
crds:
	$(CARGO) run --quiet -- crd --dir crds

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## unit: the pure tests only (no control plane, no AWS emulator).
unit:
	$(CARGO) test --lib --test crds

## prepare: build the control plane, install moto and the template linters (cfn-lint,
## checkov), all cached under ~/.cache, and MariaDB, PHP and busybox for the script tests;
## no-op when present.
prepare: controlplane moto linters mariadb
controlplane:
	@bash hack/build-controlplane.sh >/dev/null
moto:
	@bash hack/install-moto.sh >/dev/null
linters:
	@bash hack/install-linters.sh >/dev/null
mariadb:
	@bash hack/install-mariadb.sh >/dev/null

## test: everything — lint, unit tests, and the tests on a real control plane + moto.
## The harness starts its own environment and stops it when the tests end.
test: prepare lint
	$(CARGO) test --all-targets
	@bash hack/dev-env.sh wait-stopped

## test-dev: the same tests against the running `make dev-up` environment (faster loop;
## stop `make demo`'s operator first with `make demo-down`).
test-dev: demo-down
	OPENEMR_TEST_ENV=$(CURDIR)/.dev/env $(CARGO) test --all-targets

## bench: the scale benchmark (CLINICS clinics, default 100) on its own control plane +
## moto; writes bench/scale-$(CLINICS).{md,json}. BENCH_ARGS adds options, e.g.
## `make bench CLINICS=1000 BENCH_ARGS="--inventory-interval 30s"` (see `--help`).
CLINICS ?= 100
BENCH_ARGS ?=
bench: prepare
	$(CARGO) bench --bench scale -- --clinics $(CLINICS) $(BENCH_ARGS)
	@bash hack/dev-env.sh wait-stopped

## bench-documents: the documents engine beside restic, rclone and `aws s3 sync` on one
## generated tree against one moto (installs the peers: hack/install-bench-tools.sh);
## writes bench/documents.{md,json}. DOCUMENTS_BENCH_ARGS adds options (`--help`).
DOCUMENTS_BENCH_ARGS ?=
bench-documents: moto
	$(CARGO) bench --bench documents -- $(DOCUMENTS_BENCH_ARGS)

## bench-backups: backup sets on their own control plane + moto: one set end to end, 1,000
## clinics' sets due at the same minute, a year of daily sets pruned; writes
## bench/backups.{md,json}. BACKUPS_BENCH_ARGS adds options (`--help`).
BACKUPS_BENCH_ARGS ?=
bench-backups: prepare
	$(CARGO) bench --bench backups -- $(BACKUPS_BENCH_ARGS)
	@bash hack/dev-env.sh wait-stopped

## dev-up / dev-down: the local environment in the background; `source .dev/env` to use it.
dev-up: prepare
	@bash hack/dev-env.sh up
dev-down: demo-down
	@bash hack/dev-env.sh down

## demo: control plane + moto, CRDs and RBAC, the operator, the example clinic and policy.
demo: dev-up build
	@bash hack/demo.sh

demo-down:
	@if [ -f .dev/operator.pid ]; then kill $$(cat .dev/operator.pid) 2>/dev/null || true; rm -f .dev/operator.pid; fi

clean: dev-down
	$(CARGO) clean
	rm -rf .dev
