package agent

import (
	"net/netip"
	"strings"
	"testing"
)

// TestRestoreChanges: an incremental restore names only the chains that changed (and deletes the
// ones that went away); nothing changed means no input at all.
func TestRestoreChanges(t *testing.T) {
	ref := referenceState()
	svcChainOf := func(st State, i int) string { return svcChain(st.Services[i]) }
	// The hairpin chain of the producers' block changes with their set of IPs; POSTROUTING and
	// MAGIC-IP-HAIRPIN do not, until the block has no producer left.
	hairpin := bucketChain(hairpinBucket(netip.MustParseAddr("10.244.1.5")))
	hairpinA := "-A " + hairpin + ` -s 10.244.1.5/32 -d 10.244.1.5/32 -m comment --comment "hairpin: datadog/agent-a reaching itself" -j MASQUERADE`
	tests := map[string]struct {
		next func() State
		// want lists the exact lines expected; nil means RestoreChanges returns nil.
		want []string
	}{
		"nothing changed": {next: referenceState, want: nil},
		"one endpoint gone": {
			next: func() State {
				st := referenceState()
				st.Services[0].Endpoints = st.Services[0].Endpoints[:1]
				return st
			},
			want: []string{
				"*nat",
				":" + hairpin + " - [0:0]",
				":" + svcChainOf(ref, 0) + " - [0:0]",
				hairpinA,
				"-A " + svcChainOf(ref, 0) + ` -p tcp -m comment --comment "datadog:apm -> datadog/agent-a" -j DNAT --to-destination 10.244.1.5:8126`,
				"COMMIT",
			},
		},
		"first producer of the UDP port": {
			next: func() State {
				st := referenceState()
				st.Services[1].Endpoints = []Endpoint{{Pod: "datadog/agent-a", Addr: netip.MustParseAddrPort("10.244.1.5:8125")}}
				return st
			},
			want: []string{
				"*nat",
				":MAGIC-IP-SERVICES - [0:0]",
				":" + svcChainOf(ref, 1) + " - [0:0]",
				"-A MAGIC-IP-SERVICES -d 169.254.210.210/32 -p tcp -m tcp --dport 8126 -m comment --comment \"datadog:apm\" -j " + svcChainOf(ref, 0),
				"-A MAGIC-IP-SERVICES -d 169.254.210.210/32 -p udp -m udp --dport 8125 -m comment --comment \"datadog:dogstatsd\" -j " + svcChainOf(ref, 1),
				"-A " + svcChainOf(ref, 1) + ` -p udp -m comment --comment "datadog:dogstatsd -> datadog/agent-a" -j DNAT --to-destination 10.244.1.5:8125`,
				"COMMIT",
			},
		},
		"last producer of the TCP port gone": {
			next: func() State {
				st := referenceState()
				st.Services[0].Endpoints = nil
				return st
			},
			want: []string{
				"*nat",
				":MAGIC-IP-HAIRPIN - [0:0]",
				":MAGIC-IP-SERVICES - [0:0]",
				":" + hairpin + " - [0:0]",
				":" + svcChainOf(ref, 0) + " - [0:0]",
				"-X " + hairpin,
				"-X " + svcChainOf(ref, 0),
				"COMMIT",
			},
		},
	}
	prev := Render(ref, ExternalInterfaces("eth0"))
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Render(tc.next(), ExternalInterfaces("eth0")).RestoreChanges(prev)
			if tc.want == nil {
				if got != nil {
					t.Fatalf("want no input, got:\n%s", got)
				}
				return
			}
			if want := strings.Join(tc.want, "\n") + "\n"; string(got) != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}
