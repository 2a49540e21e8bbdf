package agent

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestNodeRecord(t *testing.T) {
	mip := func(name string) v1alpha1.MagicIP { return v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: name}} }
	mips := []v1alpha1.MagicIP{mip("otel"), mip("dd"), mip("lost"), mip("bad"), mip("apm")}
	ep := func(pod, ip string, port uint16) Endpoint {
		return Endpoint{Pod: pod, Addr: netip.AddrPortFrom(netip.MustParseAddr(ip), port)}
	}
	res := SyncResult{
		State: State{
			Services: []Service{
				{MagicIP: "dd", PortName: "apm", Endpoints: []Endpoint{ep("datadog/a", "10.0.0.2", 8126), ep("datadog/b", "10.0.0.3", 8126)}},
				{MagicIP: "dd", PortName: "statsd", Endpoints: []Endpoint{ep("datadog/a", "10.0.0.2", 8125), ep("datadog/b", "10.0.0.3", 8125)}},
				{MagicIP: "otel", PortName: "grpc"},
			},
			Conflicts: map[string]v1alpha1.Conflict{"lost": {Claim: v1alpha1.Claim{Address: netip.MustParseAddr("169.254.210.210"), Port: 8126, Protocol: v1alpha1.ProtocolTCP}, Winner: "dd"}},
			Invalid:   map[string]string{"bad": "address not allowed"},
			Unprogrammed: map[string][]v1alpha1.UnprogrammedAddress{
				"otel": {{Address: "fd00::10", Reason: v1alpha1.ReasonAddressFamilyNotSupported, Message: "IPv6"}},
				"bad":  {{Address: "fd00::11", Reason: v1alpha1.ReasonAddressFamilyNotSupported, Message: "IPv6"}},
			},
		},
		Unserved:         map[string]string{"apm": "eth9"},
		FailedInterfaces: map[string]error{"eth9": errors.New("no such interface")},
	}
	got := nodeRecord(mips, res, nil)
	want := []v1alpha1.MagicIPOnNode{
		{Name: "apm", Reason: v1alpha1.ReasonInterfaceUnavailable, Message: "interface eth9: no such interface"},
		{Name: "bad", Reason: v1alpha1.ReasonInvalid, Message: "address not allowed"},
		{Name: "dd", Programmed: true, Reason: v1alpha1.ReasonProgrammed, Producers: []v1alpha1.LocalProducer{{Pod: "datadog/a", IP: "10.0.0.2"}, {Pod: "datadog/b", IP: "10.0.0.3"}}},
		{Name: "lost", Reason: v1alpha1.ReasonConflict, Message: "169.254.210.210:8126/TCP is already claimed by MagicIP dd (the older one wins)"},
		{Name: "otel", Programmed: true, Reason: v1alpha1.ReasonProgrammed, UnprogrammedAddresses: []v1alpha1.UnprogrammedAddress{
			{Address: "fd00::10", Reason: v1alpha1.ReasonAddressFamilyNotSupported, Message: "IPv6"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("record:\n got %+v\nwant %+v", got, want)
	}
	failed := nodeRecord(mips, res, errors.New("iptables-restore: exit 4"))
	if e := failed[2]; e.Programmed || e.Reason != v1alpha1.ReasonSyncFailed || e.Producers != nil {
		t.Errorf("after a failed sync dd is %+v, want not programmed, SyncFailed", e)
	}
	if e := failed[0]; e.Reason != v1alpha1.ReasonInterfaceUnavailable {
		t.Errorf("after a failed sync apm is %+v, want InterfaceUnavailable still", e)
	}
}
