// Package e2e tests magic-ip against real parts: kube-apiserver + etcd, network namespaces, iptables.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

// agentBin and webhookBin are built once for the package: tests run the same binaries users
// deploy (one agent process per simulated node).
var agentBin, webhookBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "magic-ip-e2e-bin-")
	if err == nil {
		agentBin, err = harness.Build(dir, "./cmd/magic-ip-agent")
	}
	if err == nil {
		webhookBin, err = harness.Build(dir, "./cmd/magic-ip-webhook")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := harness.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}
