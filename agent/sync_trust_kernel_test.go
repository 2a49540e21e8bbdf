package agent

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestSyncTrustsAddressesUntilFull: a sync that changes only producers (a Fallback switch) leaves
// the addresses alone, as it does the unchanged rules — no netlink request before its rule write
// — and the next full sync repairs them. Shown with the address removed behind the agent's back:
// still gone after the switch (which did write its rules), back after the full sync.
func TestSyncTrustsAddressesUntilFull(t *testing.T) {
	for name, open := range kernelDatapaths() {
		t.Run(name, func(t *testing.T) {
			ns := newNetns(t, "trust"+name[:3])
			inNetns(t, ns, func(ipt *Iptables, links *Links) error {
				ctx := context.Background()
				dp, err := open(ipt)
				if err != nil {
					return err
				}
				s := &Syncer{Datapath: dp, Links: links, Log: logr.Discard()}
				carries := func() bool {
					out, _ := run("ip", "-4", "addr", "show", "dev", bridgeIface)
					return strings.Contains(out, magic4.String()+"/32")
				}
				if _, err := s.Sync(ctx, producerState("apm/local", "10.2.0.2"), true); err != nil {
					return err
				}
				if !carries() {
					t.Errorf("after the first sync, %s does not carry %s", bridgeIface, magic4)
				}
				if _, err := run("ip", "addr", "del", magic4.String()+"/32", "dev", bridgeIface); err != nil {
					return err
				}
				res, err := s.Sync(ctx, producerState("apm/remote", "10.3.0.2"), false)
				if err != nil {
					return err
				}
				if !res.Wrote || carries() {
					t.Errorf("switch to another producer: wrote %v, address re-added %v; want the rules written and the addresses not touched until the full sync", res.Wrote, carries())
				}
				if _, err := s.Sync(ctx, producerState("apm/remote", "10.3.0.2"), true); err != nil {
					return err
				}
				if !carries() {
					t.Errorf("the full sync did not put %s back on %s", magic4, bridgeIface)
				}
				return nil
			})
		})
	}
}

// producerState serves magic4:80/TCP on the bridge with one producer.
func producerState(pod, ip string) State {
	return State{
		Addresses: map[string][]netip.Addr{bridgeIface: {magic4}},
		Services: []Service{{MagicIP: "m", PortName: "tcp", Address: magic4, Port: 80, Protocol: v1alpha1.ProtocolTCP,
			Interface: bridgeIface, WhenNoProducer: v1alpha1.Fallback,
			Endpoints: []Endpoint{{Pod: pod, Addr: netip.AddrPortFrom(netip.MustParseAddr(ip), 8080)}}}},
	}
}
