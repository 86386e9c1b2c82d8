# syntax=docker/dockerfile:1
#
# Both podmeta images from one build:
#
#   docker build --target podmeta    -t ghcr.io/podmeta/podmeta:TAG    .
#   docker build --target ambassador -t ghcr.io/podmeta/ambassador:TAG .
#
# Static binaries (CGO_ENABLED=0) on distroless/static, running as the nonroot user
# 65532 that the chart's securityContext and the injected ambassador's runAsUser expect.
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 --target … .
# VERSION and COMMIT end up in `podmeta version` / `ambassador --version`:
#   --build-arg VERSION=$(git describe --tags --always --dirty) --build-arg COMMIT=$(git rev-parse --short HEAD)

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
ARG COMMIT=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"; \
    for cmd in podmeta ambassador; do \
      CGO_ENABLED=0 GOOS="${TARGETOS}" GOARCH="${TARGETARCH}" \
        go build -trimpath -ldflags "${ldflags}" -o "/out/${cmd}" "./cmd/${cmd}"; \
    done

# The webhook server, `podmeta inject` and `podmeta explain`. The chart passes
# `webhook` and its flags as args.
FROM gcr.io/distroless/static:nonroot AS podmeta
COPY --from=build /out/podmeta /podmeta
USER 65532:65532
ENTRYPOINT ["/podmeta"]

# The sidecar podmeta injects (podmeta webhook --ambassador-image=…).
FROM gcr.io/distroless/static:nonroot AS ambassador
COPY --from=build /out/ambassador /ambassador
USER 65532:65532
ENTRYPOINT ["/ambassador"]
