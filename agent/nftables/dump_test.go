package nftables

import (
	"testing"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestParseRules: a rule dump's messages give each rule's chain, comment and expression count;
// a message the kernel flagged NLM_F_DUMP_INTR makes the dump interrupted (read again); a
// message too short for its nfgenmsg header is an error.
func TestParseRules(t *testing.T) {
	rule := func(chain, comment string, exprs int, flags netlink.HeaderFlags) netlink.Message {
		t.Helper()
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_RULE_TABLE, TableName)
		ae.String(unix.NFTA_RULE_CHAIN, chain)
		ae.Nested(unix.NFTA_RULE_EXPRESSIONS, func(nae *netlink.AttributeEncoder) error {
			for range exprs {
				nae.Nested(unix.NFTA_LIST_ELEM, func(e *netlink.AttributeEncoder) error {
					e.String(unix.NFTA_EXPR_NAME, "counter")
					return nil
				})
			}
			return nil
		})
		if comment != "" {
			ae.Bytes(unix.NFTA_RULE_USERDATA, userdata.AppendString(nil, userdata.TypeComment, comment))
		}
		b, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return netlink.Message{Header: netlink.Header{Flags: flags}, Data: append([]byte{byte(TableFamily), 0, 0, 0}, b...)}
	}
	for name, tc := range map[string]struct {
		msgs        []netlink.Message
		want        map[string][]ObservedRule
		interrupted bool
		err         bool
	}{
		"rules of two chains, in order": {
			msgs: []netlink.Message{rule("services", "a", 3, netlink.Multi), rule("input", "", 5, netlink.Multi), rule("services", "b", 1, netlink.Multi)},
			want: map[string][]ObservedRule{"services": {{Comment: "a", Exprs: 3}, {Comment: "b", Exprs: 1}}, "input": {{Exprs: 5}}},
		},
		"nothing":     {want: map[string][]ObservedRule{}},
		"interrupted": {msgs: []netlink.Message{rule("services", "a", 3, netlink.Multi|netlink.DumpInterrupted)}, want: map[string][]ObservedRule{"services": {{Comment: "a", Exprs: 3}}}, interrupted: true},
		"no header":   {msgs: []netlink.Message{{Data: []byte{1}}}, err: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, interrupted, err := parseRules(tc.msgs)
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want an error: %v", err, tc.err)
			}
			if tc.err {
				return
			}
			if interrupted != tc.interrupted || len(got) != len(tc.want) {
				t.Fatalf("got %v (interrupted %v), want %v (interrupted %v)", got, interrupted, tc.want, tc.interrupted)
			}
			for chain, rules := range tc.want {
				if len(got[chain]) != len(rules) {
					t.Fatalf("chain %s: %v, want %v", chain, got[chain], rules)
				}
				for i := range rules {
					if got[chain][i] != rules[i] {
						t.Errorf("chain %s rule %d: %+v, want %+v", chain, i, got[chain][i], rules[i])
					}
				}
			}
		})
	}
}
