package agent

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// NftablesDatapath renders States into our own nftables table (inet magic-ip: IPv4 and IPv6) and
// writes it in one netlink transaction per sync.
type NftablesDatapath struct {
	NFT   *nftables.Datapath
	Local *LocalDetector
	// Counters, when set, reads the verdict rules' counters before a write that rewrites them.
	// Its Read must use a netlink socket of its own (scrapes run beside syncs): see
	// nftablesCounters.
	Counters *NoProducerCounters

	// render keeps the rules rendered last (see nftables.Renderer).
	render nftables.Renderer
}

// Name implements Datapath.
func (d *NftablesDatapath) Name() string { return DatapathNftables }

// Execs implements Datapath: netlink only, no process.
func (d *NftablesDatapath) Execs() int64 { return 0 }

// Collectors implements Datapath.
func (d *NftablesDatapath) Collectors() []prometheus.Collector {
	if d.Counters == nil {
		return nil
	}
	return []prometheus.Collector{d.Counters}
}

// IPv6 implements Datapath: the inet table holds both families.
func (d *NftablesDatapath) IPv6() error { return nil }

// Prepare implements Datapath: a write is one netlink transaction, with nothing to start ahead.
func (d *NftablesDatapath) Prepare(context.Context) {}

// Cleanup implements Datapath: our table goes, nothing else is touched.
func (d *NftablesDatapath) Cleanup(context.Context) error { return d.NFT.Cleanup() }

// Apply implements Datapath. A write that may rewrite the verdict rules (they change, or a full
// sync may repair drift by rewriting the table) runs within Counters.aroundRewrite, so what they
// counted is kept; the series restart from the rules written only when they were rewritten.
func (d *NftablesDatapath) Apply(ctx context.Context, st State, full bool) (wrote bool, drift []string, err error) {
	in := NftablesInput(st, d.Local)
	rs := d.render.Render(in)
	changes := d.NFT.VerdictsChange(rs)
	if d.Counters == nil || !(changes || full) {
		return d.NFT.Apply(rs, full)
	}
	err = d.Counters.aroundRewrite(ctx, DatapathNftables, func() (map[counterKey]uint64, error) {
		wrote, drift, err = d.NFT.Apply(rs, full)
		if err != nil || !(changes || len(drift) > 0) {
			return nil, err
		}
		return nftVerdictKeys(in), nil
	})
	return wrote, drift, err
}

// nftablesCounters makes c read the verdict rules of our table through k (a netlink socket of
// its own).
func nftablesCounters(c *NoProducerCounters, k *nftables.Kernel) *NoProducerCounters {
	c.Read = func(context.Context, string) (map[counterKey]uint64, error) { // one source: the table
		vcs, err := k.VerdictCounts()
		if err != nil {
			return nil, err
		}
		counts := make(map[counterKey]uint64, len(vcs))
		for _, v := range vcs {
			counts[nftCounterKey(v.Key, v.Protocol, v.Verdict)] += v.Packets
		}
		return counts, nil
	}
	return c
}

// nftVerdictKeys are the series of the verdict rules rendered from in, at 0.
func nftVerdictKeys(in nftables.Input) map[counterKey]uint64 {
	keys := make(map[counterKey]uint64, len(in.Services))
	for _, s := range in.Services {
		keys[nftCounterKey(s.Key, s.Protocol, s.Verdict)] = 0
	}
	return keys
}

// nftCounterKey names the series of a verdict rule as the iptables datapath does.
func nftCounterKey(key, protocol string, v nftables.Verdict) counterKey {
	k := counterKey{Protocol: strings.ToUpper(protocol), Action: "refused"}
	k.MagicIP, k.Port, _ = strings.Cut(key, ":")
	if v == nftables.Drop {
		k.Action = "dropped"
	}
	return k
}

// NftablesInput is what the nftables backend needs of a State and the local-traffic detector
// (both families).
func NftablesInput(st State, local *LocalDetector) nftables.Input {
	in := nftables.Input{Addresses: addresses(st), Local: nftLocal(local)}
	for _, s := range st.Services {
		svc := nftables.Service{Key: s.Key(), Addr: s.Address, Port: uint16(s.Port), Protocol: proto(s.Protocol), Verdict: nftables.Reject}
		if s.WhenNoProducer == v1alpha1.Drop {
			svc.Verdict = nftables.Drop
		}
		for _, ep := range s.Endpoints {
			e := nftables.Endpoint{Pod: ep.Pod, Addr: ep.Addr, Remote: ep.Node != ""}
			switch {
			case ep.Terminating:
				e.Note = "terminating, no Ready producer"
			case ep.Node != "":
				e.Note = "fallback to node " + ep.Node
			}
			svc.Endpoints = append(svc.Endpoints, e)
		}
		in.Services = append(in.Services, svc)
	}
	return in
}

func nftLocal(d *LocalDetector) nftables.Local {
	switch {
	case d == nil:
		return nftables.Local{All: true}
	case d.Mode == NodeAddresses:
		return nftables.Local{All: true, External: d.External}
	}
	var l nftables.Local
	for _, m := range d.Local {
		if m.Source.IsValid() {
			l.Sources = append(l.Sources, m.Source)
		} else {
			l.Interfaces = append(l.Interfaces, m.Interface)
		}
	}
	return l
}
