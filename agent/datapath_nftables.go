package agent

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// NftablesDatapath renders States into our own nftables table (ip magic-ip) and writes it in one
// netlink transaction per sync.
type NftablesDatapath struct {
	NFT   *nftables.Datapath
	Local *LocalDetector

	render nftables.Renderer
}

// Name implements Datapath.
func (d *NftablesDatapath) Name() string { return DatapathNftables }

// Execs implements Datapath: netlink only, no process.
func (d *NftablesDatapath) Execs() int64 { return 0 }

// Collectors implements Datapath: the verdict counters are not read from nftables yet.
func (d *NftablesDatapath) Collectors() []prometheus.Collector { return nil }

// Cleanup implements Datapath: our table goes, nothing else is touched.
func (d *NftablesDatapath) Cleanup(context.Context) error { return d.NFT.Cleanup() }

// Apply implements Datapath.
func (d *NftablesDatapath) Apply(_ context.Context, st State, full bool) (bool, []string, error) {
	return d.NFT.Apply(d.render.Render(NftablesInput(st, d.Local)), full)
}

// NftablesInput is what the nftables backend needs of a State and the local-traffic detector
// (IPv4 only, as the iptables rules).
func NftablesInput(st State, local *LocalDetector) nftables.Input {
	in := nftables.Input{Addresses: addresses(st), Local: nftLocal(local)}
	for _, s := range st.Services {
		if !s.Address.Is4() {
			continue
		}
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
