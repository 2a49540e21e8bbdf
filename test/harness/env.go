package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RunPrefix starts the name of every network namespace this test process creates, so the leak
// check can find ours (and only ours): "mip" + the process id.
func RunPrefix() string { return fmt.Sprintf("mip%d", os.Getpid()) }

// RequireRoot skips a test that needs root or ip/iptables, saying why — except under CI
// (CI=true), where everything needed is present and a skip would hide a broken suite: there it fails.
func RequireRoot(t T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (it creates network namespaces and iptables rules)")
	}
	for _, bin := range []string{"ip", "iptables", "iptables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" (apt-get install iproute2 iptables, or run `make prereqs`)")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "this test needs " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " — CI must provide it")
	}
	t.Skip("SKIPPED: " + msg)
}

// Leaks lists network namespaces this process created and did not remove.
func Leaks() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), RunPrefix()+"-") {
			left = append(left, "netns "+e.Name())
		}
	}
	return left, nil
}

// Main runs the tests and then the leak check: a namespace (and so a veth or bridge) of ours left
// behind fails the run.
func Main(m *testing.M) int {
	code := m.Run()
	left, err := Leaks()
	if err != nil {
		fmt.Fprintf(os.Stderr, "leak check: %v\n", err)
		return 1
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "leak check: left behind: %s\n", strings.Join(left, ", "))
		return 1
	}
	return code
}
