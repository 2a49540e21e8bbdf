package agent

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

var (
	apmRefused   = counterKey{MagicIP: "datadog", Port: "apm", Protocol: "TCP", Action: "refused"}
	statsRefused = counterKey{MagicIP: "datadog", Port: "dogstatsd", Protocol: "UDP", Action: "refused"}
	statsDropped = counterKey{MagicIP: "datadog", Port: "dogstatsd", Protocol: "UDP", Action: "dropped"}
)

// listing is `iptables -v -S MAGIC-IP-INPUT` output as iptables 1.8.9 prints it (nf_tables and
// legacy alike), with the counts given for the apm and dogstatsd verdicts.
func listing(apm, stats uint64, statsTarget string) []byte {
	return []byte(`-N MAGIC-IP-INPUT
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p tcp -m tcp --dport 8126 -m conntrack --ctstate NEW -m comment --comment "datadog:apm: not redirected" -c ` + itoa(apm) + ` 60 -j REJECT --reject-with tcp-reset
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "datadog:dogstatsd: not redirected" -c ` + itoa(stats) + ` 29 -j ` + statsTarget + `
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p tcp -m conntrack --ctstate NEW -m comment --comment "169.254.210.210: undeclared port" -c 7 420 -j REJECT --reject-with tcp-reset
`)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestVerdictRules: the verdict rules are found in a listing with their packet counts, and in
// restore input rendered by Render (so the comment they are found by is the one written), with
// the chain's declaration; undeclared-port rules, other chains and foreign comments are not.
func TestVerdictRules(t *testing.T) {
	st := referenceState()
	st.Services[1].WhenNoProducer = v1alpha1.Drop
	incremental := Render(st, nil).RestoreChanges(Ruleset{})
	onlyNat := Render(st, nil)
	delete(onlyNat.Chains, "filter")
	for _, tc := range []struct {
		name         string
		text         []byte
		want         map[counterKey]uint64
		wantDeclared bool
	}{
		{"listing", listing(5, 3, "REJECT --reject-with icmp-port-unreachable"), map[counterKey]uint64{apmRefused: 5, statsRefused: 3}, false},
		{"listing, drop", listing(0, 12, "DROP"), map[counterKey]uint64{apmRefused: 0, statsDropped: 12}, false},
		{"full restore", Render(st, nil).Restore(nil, nil), map[counterKey]uint64{apmRefused: 0, statsDropped: 0}, true},
		{"incremental restore", incremental, map[counterKey]uint64{apmRefused: 0, statsDropped: 0}, true},
		{"ip6tables-restore input", RenderFamily(dualReferenceState(), nil, IPv6).Restore(nil, nil), map[counterKey]uint64{apmRefused: 0, statsRefused: 0}, true},
		{"ip6tables listing", []byte(`-A MAGIC-IP-INPUT -d fd00::a9fe:d2d2/128 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "datadog:dogstatsd: not redirected" -c 6 300 -j REJECT --reject-with icmp6-port-unreachable` + "\n"), map[counterKey]uint64{statsRefused: 6}, false},
		{"restore without the filter table", onlyNat.Restore(nil, nil), map[counterKey]uint64{}, false},
		{"chain deleted", []byte("*filter\n:MAGIC-IP-INPUT - [0:0]\n-X MAGIC-IP-INPUT\nCOMMIT\n"), map[counterKey]uint64{}, true},
		{"same rule twice: summed", []byte(strings.Repeat(`-A MAGIC-IP-INPUT -p tcp -m comment --comment "datadog:apm: not redirected" -c 2 0 -j REJECT`+"\n", 2)), map[counterKey]uint64{apmRefused: 4}, false},
		{"not ours", []byte(strings.Join([]string{
			`:MAGIC-IP-INPUTS - [0:0]`,
			`-A MAGIC-IP-INPUTS -p tcp -m comment --comment "datadog:apm: not redirected" -c 2 0 -j REJECT`,
			`-A INPUT -p tcp -m comment --comment "datadog:apm: not redirected" -c 2 0 -j REJECT`,
			`-A MAGIC-IP-INPUT -p tcp -m comment --comment "datadog:apm" -c 2 0 -j REJECT`,
			`-A MAGIC-IP-INPUT -p tcp -m comment --comment "datadog:apm: not redirected" -c 2 0 -j ACCEPT`,
		}, "\n")), map[counterKey]uint64{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, declared := verdictRules(tc.text)
			if !maps.Equal(got, tc.want) || declared != tc.wantDeclared {
				t.Errorf("verdictRules = %v, declared %v; want %v, %v\n%s", got, declared, tc.want, tc.wantDeclared, tc.text)
			}
		})
	}
}

// TestTally: the totals only go up, across rewrites of the chain (counters back to 0) and resets
// behind our back; the series follow the rules written.
func TestTally(t *testing.T) {
	var tl tally
	type step struct {
		name    string
		written map[counterKey]uint64 // a rewrite with these rules, else a read of counts
		counts  map[counterKey]uint64
		want    map[counterKey]uint64
	}
	for _, s := range []step{
		{name: "read before any write: nothing", counts: map[counterKey]uint64{apmRefused: 9}, want: nil},
		{name: "first write: series at 0", written: map[counterKey]uint64{apmRefused: 0, statsRefused: 0}, want: map[counterKey]uint64{apmRefused: 0, statsRefused: 0}},
		{name: "read", counts: map[counterKey]uint64{apmRefused: 3, statsRefused: 1}, want: map[counterKey]uint64{apmRefused: 3, statsRefused: 1}},
		{name: "read again: the difference", counts: map[counterKey]uint64{apmRefused: 5, statsRefused: 1}, want: map[counterKey]uint64{apmRefused: 5, statsRefused: 1}},
		{name: "rewrite: kept", written: map[counterKey]uint64{apmRefused: 0, statsRefused: 0}, want: map[counterKey]uint64{apmRefused: 5, statsRefused: 1}},
		{name: "read after the rewrite: from 0, even below the old count", counts: map[counterKey]uint64{apmRefused: 2, statsRefused: 4}, want: map[counterKey]uint64{apmRefused: 7, statsRefused: 5}},
		{name: "reset behind our back", counts: map[counterKey]uint64{apmRefused: 1, statsRefused: 4}, want: map[counterKey]uint64{apmRefused: 8, statsRefused: 5}},
		{name: "rule missing (flushed): stays", counts: map[counterKey]uint64{statsRefused: 4}, want: map[counterKey]uint64{apmRefused: 8, statsRefused: 5}},
		{name: "back (repaired)", counts: map[counterKey]uint64{apmRefused: 2, statsRefused: 4}, want: map[counterKey]uint64{apmRefused: 10, statsRefused: 5}},
		{name: "action changed: the old series goes, the new one starts", written: map[counterKey]uint64{apmRefused: 0, statsDropped: 0}, want: map[counterKey]uint64{apmRefused: 10, statsDropped: 0}},
		{name: "foreign rule with our comment: ignored", counts: map[counterKey]uint64{apmRefused: 1, statsDropped: 2, statsRefused: 50}, want: map[counterKey]uint64{apmRefused: 11, statsDropped: 2}},
		{name: "MagicIP gone", written: map[counterKey]uint64{}, want: map[counterKey]uint64{}},
	} {
		if s.written != nil {
			tl.written("iptables", s.written)
		} else {
			tl.read("iptables", s.counts)
		}
		if !maps.Equal(tl.totals, s.want) || (s.want == nil) != (tl.totals == nil) {
			t.Fatalf("%s: totals %v, want %v", s.name, tl.totals, s.want)
		}
	}
}

// fakeKernel stands for iptables: the counts it lists, and the calls.
type fakeKernel struct {
	apm, stats uint64
	reads      int
	fail       error
}

func (k *fakeKernel) read(context.Context, string) (map[counterKey]uint64, error) {
	k.reads++
	counts, _ := verdictRules(listing(k.apm, k.stats, "REJECT --reject-with icmp-port-unreachable"))
	return counts, k.fail
}

// collect gathers c's series by their labels (magicip/port/protocol/action) and its read count.
func collect(t *testing.T, c *NoProducerCounters) (map[string]float64, float64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, reads := map[string]float64{}, -1.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "magic_ip_agent_no_producer_connections_total":
				series[seriesName(m)] = m.GetCounter().GetValue()
			case "magic_ip_agent_rule_counter_reads_total":
				reads = m.GetCounter().GetValue()
			}
		}
	}
	return series, reads
}

func seriesName(m *dto.Metric) string {
	byName := map[string]string{}
	for _, l := range m.GetLabel() {
		byName[l.GetName()] = l.GetValue()
	}
	return byName["magicip"] + "/" + byName["port"] + "/" + byName["protocol"] + "/" + byName["action"]
}

// TestNoProducerCountersScrape: scrapes read the kernel at most once per MinInterval (none before
// the rules are written); a rewrite of the verdict chain reads it first, whatever the interval, so
// what it counted is kept; a restore that leaves the chain alone reads nothing; a failed restore
// or read changes nothing.
func TestNoProducerCountersScrape(t *testing.T) {
	now := time.Unix(1000, 0)
	k := &fakeKernel{}
	c := NewNoProducerCounters(5*time.Second, logr.Discard())
	c.Read, c.Now = k.read, func() time.Time { return now }
	st := referenceState()
	full := Render(st, nil).Restore(nil, nil)
	restored := 0
	restore := func(context.Context, []byte) error { restored++; return nil }
	check := func(what string, want map[string]float64, wantReads float64) {
		t.Helper()
		got, reads := collect(t, c)
		if !maps.Equal(got, want) || reads != wantReads {
			t.Errorf("%s: series %v, reads %v; want %v, %v", what, got, reads, want, wantReads)
		}
	}
	check("before the first write", map[string]float64{}, 0)
	if err := c.aroundRestore(t.Context(), "iptables", full, restore); err != nil || restored != 1 || k.reads != 0 {
		t.Fatalf("first restore: err %v, restored %d, reads %d; want the restore alone", err, restored, k.reads)
	}
	k.apm, k.stats = 4, 1
	check("first scrape", map[string]float64{"datadog/apm/TCP/refused": 4, "datadog/dogstatsd/UDP/refused": 1}, 1)
	k.apm = 6
	now = now.Add(4 * time.Second)
	check("within the interval: the last figures", map[string]float64{"datadog/apm/TCP/refused": 4, "datadog/dogstatsd/UDP/refused": 1}, 1)
	now = now.Add(time.Second)
	check("interval over", map[string]float64{"datadog/apm/TCP/refused": 6, "datadog/dogstatsd/UDP/refused": 1}, 2)

	// Producers change: nat only, the verdicts keep their counters.
	prev := Render(st, nil)
	st.Services[0].Endpoints = st.Services[0].Endpoints[:1]
	if err := c.aroundRestore(t.Context(), "iptables", Render(st, nil).RestoreChanges(prev), restore); err != nil || k.reads != 2 {
		t.Fatalf("nat-only restore: err %v, reads %d; want no read", err, k.reads)
	}
	k.apm = 9
	if err := c.aroundRestore(t.Context(), "iptables", full, func(context.Context, []byte) error { return errors.New("boom") }); err == nil || k.reads != 3 {
		t.Fatalf("failed restore: err %v, reads %d; want its error, after a read", err, k.reads)
	}
	k.apm = 10
	if err := c.aroundRestore(t.Context(), "iptables", full, restore); err != nil || k.reads != 4 {
		t.Fatalf("rewrite: err %v, reads %d; want a read first", err, k.reads)
	}
	k.apm, k.stats = 2, 0 // from 0 again after the rewrite
	check("after a rewrite (read before it: 10), within the interval", map[string]float64{"datadog/apm/TCP/refused": 10, "datadog/dogstatsd/UDP/refused": 1}, 4)
	now = now.Add(5 * time.Second)
	check("after a rewrite, next read", map[string]float64{"datadog/apm/TCP/refused": 12, "datadog/dogstatsd/UDP/refused": 1}, 5)
	k.fail, k.apm = errors.New("iptables: gone"), 50
	now = now.Add(5 * time.Second)
	check("failed read: unchanged", map[string]float64{"datadog/apm/TCP/refused": 12, "datadog/dogstatsd/UDP/refused": 1}, 6)
	check("failed read: tried again at the next scrape", map[string]float64{"datadog/apm/TCP/refused": 12, "datadog/dogstatsd/UDP/refused": 1}, 7)
}

// kernels stands for iptables and ip6tables: the counts each lists, and the sources read in turn.
type kernels struct {
	counts map[string]map[counterKey]uint64
	reads  []string
}

func (k *kernels) read(_ context.Context, src string) (map[counterKey]uint64, error) {
	k.reads = append(k.reads, src)
	return maps.Clone(k.counts[src]), nil
}

// TestNoProducerCountersFamilies: the IPv4 and IPv6 verdict rules of a port count in one series.
// ip6tables is read only once rules were written there, and no longer once they are gone; a
// rewrite of one family's chain reads that family alone and leaves the other's baseline; the
// series of a rule only one family held goes with it, the others keep their totals.
func TestNoProducerCountersFamilies(t *testing.T) {
	now := time.Unix(1000, 0)
	k := &kernels{counts: map[string]map[counterKey]uint64{}}
	c := NewNoProducerCounters(5*time.Second, logr.Discard())
	c.Read, c.Now = k.read, func() time.Time { return now }
	st := dualReferenceState()
	v4, v6 := RenderFamily(st, nil, IPv4).Restore(nil, nil), RenderFamily(st, nil, IPv6).Restore(nil, nil)
	restore := func(context.Context, []byte) error { return nil }
	step := func(what string, wantReads []string, want map[string]float64) {
		t.Helper()
		got, _ := collect(t, c)
		if !slices.Equal(k.reads, wantReads) || !maps.Equal(got, want) {
			t.Fatalf("%s: reads %v, series %v; want %v, %v", what, k.reads, got, wantReads, want)
		}
		k.reads, now = nil, now.Add(5*time.Second)
	}
	if err := c.aroundRestore(t.Context(), "iptables", v4, restore); err != nil {
		t.Fatal(err)
	}
	step("IPv4 written: only iptables read", []string{"iptables"}, map[string]float64{"datadog/apm/TCP/refused": 0, "datadog/dogstatsd/UDP/refused": 0})
	v6only := counterKey{MagicIP: "six", Port: "apm", Protocol: "TCP", Action: "refused"}
	if err := c.aroundRestore(t.Context(), "ip6tables", v6, restore); err != nil {
		t.Fatal(err)
	}
	// An IPv6-only MagicIP appears: ip6tables rewritten, read first.
	k.counts["iptables"] = map[counterKey]uint64{apmRefused: 3}
	k.counts["ip6tables"] = map[counterKey]uint64{apmRefused: 4, statsRefused: 1}
	err := c.aroundRewrite(t.Context(), "ip6tables", func() (map[counterKey]uint64, error) {
		k.counts["ip6tables"] = map[counterKey]uint64{}
		return map[counterKey]uint64{apmRefused: 0, statsRefused: 0, v6only: 0}, nil
	})
	if err != nil || !slices.Equal(k.reads, []string{"ip6tables"}) {
		t.Fatalf("IPv6 rewrite: err %v, reads %v; want ip6tables read alone", err, k.reads)
	}
	k.reads, now = nil, now.Add(5*time.Second) // the read before the rewrite was a read
	k.counts["ip6tables"] = map[counterKey]uint64{apmRefused: 2, v6only: 5}
	step("both families summed", []string{"ip6tables", "iptables"}, map[string]float64{"datadog/apm/TCP/refused": 9, "datadog/dogstatsd/UDP/refused": 1, "six/apm/TCP/refused": 5})
	k.counts["ip6tables"] = map[counterKey]uint64{apmRefused: 3, v6only: 6}
	err = c.aroundRewrite(t.Context(), "ip6tables", func() (map[counterKey]uint64, error) { return map[counterKey]uint64{}, nil })
	if err != nil || !slices.Equal(k.reads, []string{"ip6tables"}) {
		t.Fatalf("IPv6 rules removed: err %v, reads %v; want ip6tables read first", err, k.reads)
	}
	k.reads, now = nil, now.Add(5*time.Second)
	step("IPv6 gone: its counts kept, ip6tables no longer read", []string{"iptables"}, map[string]float64{"datadog/apm/TCP/refused": 10, "datadog/dogstatsd/UDP/refused": 1})
}

// TestNoProducerCountersNil: a Syncer without counters only restores.
func TestNoProducerCountersNil(t *testing.T) {
	var c *NoProducerCounters
	var got []byte
	err := c.aroundRestore(t.Context(), "iptables", []byte("x"), func(_ context.Context, in []byte) error { got = in; return nil })
	if err != nil || !reflect.DeepEqual(got, []byte("x")) {
		t.Errorf("nil counters: err %v, restored %q", err, got)
	}
}
