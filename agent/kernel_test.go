package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestEnsureNodeSysctls runs against a directory laid out like /proc/sys (what --proc-sys-dir
// points at in the DaemonSet: the host's /proc/sys/net mounted under /host/proc/sys).
func TestEnsureNodeSysctls(t *testing.T) {
	cases := map[string]struct {
		files        map[string]string // path under the dir → content; absent = missing
		wantChanged  []string
		wantProblems int
		wantBridgeNF string
	}{
		"already right":        {files: map[string]string{"net/bridge/bridge-nf-call-iptables": "1\n", "net/ipv4/ip_forward": "1\n"}, wantBridgeNF: "1\n"},
		"bridge-nf off is set": {files: map[string]string{"net/bridge/bridge-nf-call-iptables": "0\n", "net/ipv4/ip_forward": "1\n"}, wantChanged: []string{"net.bridge.bridge-nf-call-iptables=1"}, wantBridgeNF: "1"},
		"br_netfilter missing": {files: map[string]string{"net/ipv4/ip_forward": "1\n"}, wantProblems: 1},
		"forwarding off":       {files: map[string]string{"net/bridge/bridge-nf-call-iptables": "1\n", "net/ipv4/ip_forward": "0\n"}, wantProblems: 1, wantBridgeNF: "1\n"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for p, v := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, p), []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			changed, problems := EnsureNodeSysctls(Sysctl{Dir: dir})
			if !slices.Equal(changed, tc.wantChanged) {
				t.Errorf("changed %v, want %v", changed, tc.wantChanged)
			}
			if len(problems) != tc.wantProblems {
				t.Errorf("problems %v, want %d", problems, tc.wantProblems)
			}
			if tc.wantBridgeNF != "" {
				b, err := os.ReadFile(filepath.Join(dir, "net/bridge/bridge-nf-call-iptables"))
				if err != nil || string(b) != tc.wantBridgeNF {
					t.Errorf("bridge-nf-call-iptables = %q (%v), want %q", b, err, tc.wantBridgeNF)
				}
			}
		})
	}
}
