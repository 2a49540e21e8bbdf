// Package e2e tests magic-ip against real parts: kube-apiserver + etcd, network namespaces, iptables.
package e2e

import (
	"os"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
