# sluice build helpers. `go test ./...` needs none of this: the generated
# BPF objects and Go bindings are committed.

# Debian bookworm's pinned BPF toolchain. bpf2go runs clang with
# -fdebug-prefix-map and no absolute paths, so output is byte-for-byte
# reproducible for a given clang build.
BPF2GO_CC    ?= clang-19
BPF2GO_STRIP ?= llvm-strip-19
export BPF2GO_CC BPF2GO_STRIP

TOOLCHAIN_PKGS := clang-19 llvm-19 libbpf-dev linux-libc-dev

.PHONY: generate check-generate toolchain test

## generate: recompile the C under bpf/ and regenerate the Go bindings.
generate:
	go generate ./bpf/...

## toolchain: install clang-19, llvm-19 and the libbpf/kernel headers if missing.
toolchain:
	@if ! command -v $(BPF2GO_CC) >/dev/null || ! command -v $(BPF2GO_STRIP) >/dev/null || \
	    [ ! -f /usr/include/bpf/bpf_helpers.h ] || [ ! -f /usr/include/linux/bpf.h ]; then \
		echo "installing $(TOOLCHAIN_PKGS)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(TOOLCHAIN_PKGS); \
	fi

## check-generate: regenerate and fail if any committed file would change.
check-generate: toolchain generate
	@if ! git diff --quiet -- bpf || [ -n "$$(git ls-files --others --exclude-standard -- bpf)" ]; then \
		echo "make generate changed committed files:"; git status --short -- bpf; git diff --stat -- bpf; exit 1; \
	fi
	@echo "generated files are up to date"

## test: run every test (privileged ones need root).
test:
	go test ./...
