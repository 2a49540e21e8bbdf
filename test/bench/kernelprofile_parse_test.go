package bench

import (
	"maps"
	"strings"
	"testing"
)

func TestKernelPart(t *testing.T) {
	for _, tc := range []struct{ sym, want string }{
		{"pv_native_safe_halt", "idle"},
		{"default_idle_call", "idle"},
		{"nft_do_chain", "netfilter"},
		{"__nft_trace_packet", "netfilter"},
		{"nft_rhash_lookup", "netfilter"},
		{"nf_conntrack_tcp_packet", "netfilter"},
		{"__nf_conntrack_find_get", "netfilter"},
		{"nf_nat_ipv4_manip_pkt", "netfilter"},
		{"nf_hook_slow", "netfilter"},
		{"ipt_do_table", "netfilter"},
		{"xt_conntrack_mt", "netfilter"},
		{"ipv4_conntrack_in", "netfilter"},
		{"br_nf_pre_routing", "bridge"},
		{"br_handle_frame", "bridge"},
		{"__br_forward", "bridge"},
		{"ip_route_input_slow", "routing"},
		{"fib_table_lookup", "routing"},
		{"__fib_validate_source", "routing"},
		{"ip6_pol_route", "routing"},
		{"nf_tables_commit", ""},
		{"nf_tables_dump_rules", ""},
		{"nft_payload_dump", ""},
		{"nfnetlink_rcv_batch", ""},
		{"nft_cmp_init", ""},
		{"nft_immediate_destroy", ""},
		{"nft_chain_validate", ""},
		{"nft_rhash_insert", ""},
		{"nft_rhash_walk", ""},
		{"nft_set_elem_expr_alloc", ""},
		{"nf_conntrack_alloc", "netfilter"},
		{"__nf_conntrack_hash_insert", "netfilter"},
		{"nf_conntrack_free", "netfilter"},
		{"ctnetlink_del_conntrack", ""},
		{"__nf_conntrack_confirm", "netfilter"},
		{"nf_ct_gc_expired", "netfilter"},
		{"nft_lookup_eval", "netfilter"},
		{"nft_ng_random_eval", "netfilter"},
		{"tcp_v4_rcv", ""},
		{"veth_xmit", ""},
		{"runtime.mallocgc", ""},
		{"0x000000000000e0ee", ""},
	} {
		if got := kernelPart(tc.sym); got != tc.want {
			t.Errorf("kernelPart(%q) = %q, want %q", tc.sym, got, tc.want)
		}
	}
}

func TestPerfSamples(t *testing.T) {
	const report = `# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 8K of event 'cpu-clock:ppp'
# Event count (approx.): 2000000000
#
# Overhead       Samples  Symbol
# ........  ............  ..........................
#
    38.30%          3064  [k] pv_native_safe_halt
     0.62%            50  [k] nft_do_chain
     0.30%            24  [.] 0x000000000000e0ee
     0.01%             1  [.] runtime.(*mheap).alloc
`
	got, err := perfSamples(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"pv_native_safe_halt": 3064, "nft_do_chain": 50, "0x000000000000e0ee": 24, "runtime.(*mheap).alloc": 1}
	if !maps.Equal(got, want) {
		t.Errorf("perfSamples = %v, want %v", got, want)
	}
	if _, err := perfSamples(strings.NewReader("    1.00%   many  [k] x\n")); err == nil {
		t.Error("a line with a malformed count: no error")
	}
}
