# ckpt — checkpoint/restart for Linux processes.
# `make demo` and `make test` are the two commands a newcomer runs (as root).

GO      ?= go
BIN     := bin/ckpt
PKGS    := ./...
# A count, not a duration: with a duration, Go (before 1.27) can fail the
# run with "context deadline exceeded" when the deadline races a worker
# still running an input (go.dev/issue/75804) — no crasher, just a red CI.
FUZZTIME ?= 25000x

.PHONY: all build test unit e2e fuzz demo bench lint proto deps clean golden

all: build

# A static binary (no cgo): it starts a little faster and can be copied to
# the machine an image is restarted on.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/ckpt

# deps installs what building and testing need on a fresh Debian machine.
deps:
	@./scripts/deps.sh

test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)
	$(GO) test -count=1 -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME) ./image
	$(GO) test -count=1 -run '^$$' -fuzz FuzzConvert -fuzztime $(FUZZTIME) ./image

demo: deps build
	./scripts/demo.sh

bench: deps build
	$(GO) run ./test/bench

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

# proto regenerates image/pb from image/pb/image.proto: the message types
# (protoc-gen-go) and their reflection-free codecs (protoc-gen-go-vtproto,
# see image/codec.go).
proto:
	@command -v protoc >/dev/null || apt-get install -y protobuf-compiler
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.0
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" protoc --go_out=. --go_opt=paths=source_relative \
		--go-vtproto_out=. --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+size \
		image/pb/image.proto

# golden rewrites test/golden/testdata/vN.img, the golden image of the
# current format version N, with this tree's ckpt (as root; see
# docs/image-format.md). Run it after every change to what images hold.
golden:
	$(GO) test -count=1 -v -run '^TestUpdateGolden$$' ./test/golden -update-golden

clean:
	rm -rf bin
