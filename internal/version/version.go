// Package version holds the build's version, set at link time:
//
//	go build -ldflags "-X github.com/magic-ip/magic-ip/internal/version.Version=v0.1.0 \
//	  -X github.com/magic-ip/magic-ip/internal/version.Commit=$(git rev-parse HEAD) \
//	  -X github.com/magic-ip/magic-ip/internal/version.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
//
// `make build` and the Dockerfiles pass these flags; a plain `go build` leaves the defaults.
package version

import (
	"fmt"
	"runtime"
)

// Set with -ldflags -X (they must stay plain string variables for -X to work).
var (
	Version   = "dev"
	Commit    = "unknown"
	BuildDate = "unknown"
)

// String is the one-line form printed by --version, e.g.
// "v0.1.0 (commit 571f549, built 2026-01-02T03:04:05Z, go1.26.8 linux/amd64)".
func String() string {
	return fmt.Sprintf("%s (commit %s, built %s, %s %s/%s)", Version, Commit, BuildDate, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
