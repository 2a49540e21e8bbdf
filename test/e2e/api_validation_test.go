package e2e

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// validSpec is a minimal valid MagicIP spec; each case below breaks one thing.
func validSpec() v1alpha1.MagicIPSpec {
	return v1alpha1.MagicIPSpec{
		Address: "169.254.210.210",
		Ports:   []v1alpha1.MagicIPPort{{Name: "apm", Port: 8126}},
		Producer: v1alpha1.Producer{
			Namespace: "datadog",
			Selector:  v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "datadog-agent"}},
		},
	}
}

// validationCase is a spec change that the API server must refuse, naming field with message.
type validationCase struct {
	mutate func(*v1alpha1.MagicIPSpec)
	// field and message must both appear in the API server's error.
	field, message string
}

// metadataCase: a MagicIP at a cloud platform's address is refused, naming it.
func metadataCase(addr string) validationCase {
	return validationCase{func(s *v1alpha1.MagicIPSpec) { s.Address = addr }, "spec.address",
		"must not be " + addr + ", a cloud platform address"}
}

// ipv6Case: a dual-stack MagicIP whose spec.ipv6Address is addr is refused with message.
func ipv6Case(addr, message string) validationCase {
	return validationCase{func(s *v1alpha1.MagicIPSpec) { s.IPv6Address = addr }, "spec.ipv6Address", message}
}

// TestMagicIPValidation creates invalid MagicIPs against the real API server: each must be refused
// with a message that names the field and says what to fix.
func TestMagicIPValidation(t *testing.T) {
	cp := harness.StartControlPlane(t)
	cases := map[string]validationCase{
		"address not an IP": {func(s *v1alpha1.MagicIPSpec) { s.Address = "datadog.local" }, "spec.address", "must be an IP address"},
		"address loopback":  {func(s *v1alpha1.MagicIPSpec) { s.Address = "127.0.0.1" }, "spec.address", "must not be a loopback address"},
		"address ::1":       {func(s *v1alpha1.MagicIPSpec) { s.Address = "::1" }, "spec.address", "must not be a loopback address"},
		"address unspecified": {func(s *v1alpha1.MagicIPSpec) { s.Address = "0.0.0.0" }, "spec.address",
			"must not be the unspecified address"},
		"address multicast": {func(s *v1alpha1.MagicIPSpec) { s.Address = "224.0.0.251" }, "spec.address", "not multicast or broadcast"},
		"address broadcast": {func(s *v1alpha1.MagicIPSpec) { s.Address = "255.255.255.255" }, "spec.address", "not multicast or broadcast"},
		"address not canonical": {func(s *v1alpha1.MagicIPSpec) { s.Address = "FE80:0:0::A" }, "spec.address",
			"canonical form"},
		// Cloud platform addresses: one MagicIP would take them over on every node.
		"address cloud metadata":         metadataCase("169.254.169.254"),
		"address AWS time sync":          metadataCase("169.254.169.123"),
		"address AWS DNS":                metadataCase("169.254.169.253"),
		"address ECS task metadata":      metadataCase("169.254.170.2"),
		"address EKS Pod Identity":       metadataCase("169.254.170.23"),
		"address Alibaba Cloud metadata": metadataCase("100.100.100.200"),
		"address Azure WireServer":       metadataCase("168.63.129.16"),
		"address AWS IMDS IPv6":          metadataCase("fd00:ec2::254"),
		"address GCP metadata IPv6":      metadataCase("fd20:ce::254"),
		// An IPv4-mapped IPv6 spelling does not get around the list: it is no IP to the API server.
		"address IPv4-mapped metadata": {func(s *v1alpha1.MagicIPSpec) { s.Address = "::ffff:169.254.169.254" }, "spec.address",
			"must be an IP address"},
		// Dual-stack: spec.ipv6Address is IPv6, canonical, in the agents' default IPv6 ranges, no
		// cloud address, and spec.address then holds the IPv4 address (one address per family).
		"ipv6Address IPv4":            ipv6Case("169.254.210.211", "must be an IPv6 address"),
		"ipv6Address not an IP":       ipv6Case("otel.local", "must be an IPv6 address"),
		"ipv6Address IPv4-mapped":     ipv6Case("::ffff:169.254.210.211", "must be an IPv6 address"),
		"ipv6Address not canonical":   ipv6Case("FD00::10", "canonical form"),
		"ipv6Address global unicast":  ipv6Case("2001:db8::10", "must be in fe80::/10 (link-local) or fd00::/8"),
		"ipv6Address fc00::/8 half":   ipv6Case("fc00::10", "must be in fe80::/10 (link-local) or fd00::/8"),
		"ipv6Address loopback":        ipv6Case("::1", "must be in fe80::/10 (link-local) or fd00::/8"),
		"ipv6Address unspecified":     ipv6Case("::", "must be in fe80::/10 (link-local) or fd00::/8"),
		"ipv6Address multicast":       ipv6Case("ff02::1", "must be in fe80::/10 (link-local) or fd00::/8"),
		"ipv6Address AWS IMDS":        ipv6Case("fd00:ec2::254", "must not be fd00:ec2::254, a cloud platform address"),
		"ipv6Address Scaleway":        ipv6Case("fd00:42::42", "must not be fd00:42::42, a cloud platform address"),
		"ipv6Address GCP outside too": ipv6Case("fd20:ce::254", "must not be fd20:ce::254, a cloud platform address"),
		"two IPv6 addresses": {func(s *v1alpha1.MagicIPSpec) { s.Address, s.IPv6Address = "fd00::10", "fd00::11" }, "spec.address",
			"must be the IPv4 address when spec.ipv6Address is set"},
		"{address6} without ipv6Address": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "OTLP", Value: "http://[{address6}]:{port}"}}
		}, "spec.inject.extraEnv", "the {address6} placeholder needs spec.ipv6Address"},
		"no ports":  {func(s *v1alpha1.MagicIPSpec) { s.Ports = nil }, "spec.ports", "Required value"},
		"port zero": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].Port = 0 }, "spec.ports[0].port", "greater than or equal to 1"},
		"port too big": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].Port = 65536 }, "spec.ports[0].port",
			"less than or equal to 65535"},
		"targetPort too big": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].TargetPort = 70000 }, "spec.ports[0].targetPort",
			"less than or equal to 65535"},
		"port name upper case": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].Name = "APM" }, "spec.ports[0].name",
			"lower case letters, digits and '-'"},
		"port name too long": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].Name = "a-very-long-port-name" }, "spec.ports[0].name",
			"may not be more than 15"},
		"port names repeat": {func(s *v1alpha1.MagicIPSpec) {
			s.Ports = append(s.Ports, v1alpha1.MagicIPPort{Name: "apm", Port: 8125, Protocol: v1alpha1.ProtocolUDP})
		}, "spec.ports[1]", "Duplicate value"},
		"port and protocol repeat": {func(s *v1alpha1.MagicIPSpec) {
			s.Ports = append(s.Ports, v1alpha1.MagicIPPort{Name: "apm2", Port: 8126})
		}, "spec.ports", "each (port, protocol) pair may appear only once"},
		"protocol SCTP": {func(s *v1alpha1.MagicIPSpec) { s.Ports[0].Protocol = "SCTP" }, "spec.ports[0].protocol",
			`supported values: "TCP", "UDP"`},
		"selector empty": {func(s *v1alpha1.MagicIPSpec) { s.Producer.Selector = v1alpha1.LabelSelector{} }, "spec.producer.selector",
			"must not be empty"},
		"selector bad operator": {func(s *v1alpha1.MagicIPSpec) {
			s.Producer.Selector.MatchExpressions = []v1alpha1.LabelSelectorRequirement{{Key: "app", Operator: "Like"}}
		}, "spec.producer.selector.matchExpressions[0].operator", `supported values: "In", "NotIn", "Exists", "DoesNotExist"`},
		"selector In without values": {func(s *v1alpha1.MagicIPSpec) {
			s.Producer.Selector.MatchExpressions = []v1alpha1.LabelSelectorRequirement{{Key: "app", Operator: "In"}}
		}, "spec.producer.selector.matchExpressions[0]", "values must not be empty"},
		"selector bad label key": {func(s *v1alpha1.MagicIPSpec) {
			s.Producer.Selector.MatchLabels = map[string]string{"app name": "x"}
		}, "spec.producer.selector.matchLabels", "keys must be label keys"},
		"producer namespace missing": {func(s *v1alpha1.MagicIPSpec) { s.Producer.Namespace = "" }, "spec.producer.namespace",
			"at least 1 chars long"},
		"producer namespace invalid": {func(s *v1alpha1.MagicIPSpec) { s.Producer.Namespace = "Data_Dog" }, "spec.producer.namespace",
			"must be a namespace name"},
		"hostInterface invalid": {func(s *v1alpha1.MagicIPSpec) { s.HostInterface = "eth0/../x" }, "spec.hostInterface",
			"should match"},
		"whenNoLocalProducer unknown": {func(s *v1alpha1.MagicIPSpec) { s.WhenNoLocalProducer = "Ignore" },
			"spec.whenNoLocalProducer", `supported values: "Reject", "Drop", "Fallback"`},
		"hostname not DNS": {func(s *v1alpha1.MagicIPSpec) { s.Inject.Hostnames = []string{"Datadog_Agent"} },
			"spec.inject.hostnames[0]", "must be a DNS-1123 subdomain"},
		"env name not C identifier": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "1DD-HOST", Value: "{address}"}}
		}, "spec.inject.extraEnv[0].name", "must be a C identifier"},
		"placeholder names a missing port": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "DD_URL", Value: "http://{address}:{port:statsd}"}}
		}, "spec.inject.extraEnv", "must name a port listed in spec.ports"},
		"unknown placeholder": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "DD_URL", Value: "http://{host}:{port}"}}
		}, "spec.inject.extraEnv[0].value", "unknown placeholder"},
		"podIdentity unknown fieldPath": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "POD_IP", FieldPath: "status.podIP"}}
		}, "spec.inject.podIdentity[0].fieldPath", "must be metadata.name, metadata.namespace or metadata.uid"},
		"podIdentity fieldPath missing": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "POD_UID"}}
		}, "spec.inject.podIdentity[0].fieldPath", "must be metadata.name"},
		"podIdentity name not C identifier": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "dd-entity-id", FieldPath: v1alpha1.FieldPodUID}}
		}, "spec.inject.podIdentity[0].name", "must be a C identifier"},
		"podIdentity names repeat": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "POD_ID", FieldPath: v1alpha1.FieldPodUID}, {Name: "POD_ID", FieldPath: v1alpha1.FieldPodName}}
		}, "spec.inject.podIdentity[1]", "Duplicate value"},
		"podIdentity name is an extraEnv name": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "DD_ENTITY_ID", Value: "{address}"}}
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "DD_ENTITY_ID", FieldPath: v1alpha1.FieldPodUID}}
		}, "spec.inject.podIdentity", "a name must not also be an extraEnv name"},
		"podIdentity NODE_NAME with nodeMetadata": {func(s *v1alpha1.MagicIPSpec) {
			s.Inject.NodeMetadata = true
			s.Inject.PodIdentity = []v1alpha1.PodIdentityEnv{{Name: "NODE_NAME", FieldPath: v1alpha1.FieldPodName}}
		}, "spec.inject.podIdentity", "nor NODE_NAME or NODE_IP when nodeMetadata is true"},
		"podIdentity more than 8": {func(s *v1alpha1.MagicIPSpec) {
			for i := range 9 {
				s.Inject.PodIdentity = append(s.Inject.PodIdentity, v1alpha1.PodIdentityEnv{Name: fmt.Sprintf("POD_UID_%d", i), FieldPath: v1alpha1.FieldPodUID})
			}
		}, "spec.inject.podIdentity", "must have at most 8 items"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			spec := validSpec()
			tc.mutate(&spec)
			mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{GenerateName: "invalid-"}, Spec: spec}
			err := cp.Client.Create(t.Context(), mip)
			if err == nil {
				t.Fatalf("created %s, want it refused naming %s", mip.Name, tc.field)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.field+": ") || !strings.Contains(msg, tc.message) {
				t.Errorf("error does not name %q with %q:\n%s", tc.field, tc.message, msg)
			}
		})
	}
}

// TestMagicIPValid creates valid MagicIPs and checks the defaults the API server applies.
func TestMagicIPValid(t *testing.T) {
	cp := harness.StartControlPlane(t)
	full := validSpec()
	full.Ports = append(full.Ports, v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, TargetPort: 18125, Protocol: v1alpha1.ProtocolUDP})
	full.WhenNoLocalProducer = v1alpha1.Drop
	full.HostInterface = "cni0"
	full.Producer.Selector.MatchExpressions = []v1alpha1.LabelSelectorRequirement{{Key: "tier", Operator: "Exists"}}
	full.Inject = v1alpha1.Inject{
		Env:          ptr.To(false),
		ExtraEnv:     []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}, {Name: "DD_TRACE_AGENT_URL", Value: "http://{address}:{port:apm}"}, {Name: "DD_PORT", Value: "{port}"}},
		Hostnames:    []string{"datadog.node.local"},
		NodeMetadata: true,
		PodIdentity: []v1alpha1.PodIdentityEnv{{Name: "DD_ENTITY_ID", FieldPath: v1alpha1.FieldPodUID},
			{Name: "POD_NAME", FieldPath: v1alpha1.FieldPodName}, {Name: "POD_NAMESPACE", FieldPath: v1alpha1.FieldPodNamespace}},
	}
	ipv6 := validSpec()
	ipv6.Address = "fe80::a9fe:d2d2"
	dual := validSpec()
	dual.IPv6Address = "fd00::a9fe:d2d2"
	dual.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "OTLP", Value: "http://[{address6}]:{port}"}, {Name: "HOSTS", Value: "{address},{address6}"}}
	dualLinkLocal := validSpec()
	dualLinkLocal.IPv6Address = "fe80::a9fe:d2d3"
	same := validSpec() // the same address and port as "minimal" is valid: conflicts are status, not schema
	cases := map[string]struct {
		spec  v1alpha1.MagicIPSpec
		check func(t *testing.T, got v1alpha1.MagicIPSpec)
	}{
		"minimal": {validSpec(), func(t *testing.T, got v1alpha1.MagicIPSpec) {
			if got.Ports[0].Protocol != v1alpha1.ProtocolTCP || got.WhenNoLocalProducer != v1alpha1.Reject ||
				got.Inject.Env == nil || !*got.Inject.Env || got.Inject.NodeMetadata {
				t.Errorf("defaults not applied: protocol %q whenNoLocalProducer %q inject %+v", got.Ports[0].Protocol, got.WhenNoLocalProducer, got.Inject)
			}
			if got.Ports[0].EffectiveTargetPort() != 8126 {
				t.Errorf("target port %d, want the port 8126", got.Ports[0].EffectiveTargetPort())
			}
		}},
		"full": {full, func(t *testing.T, got v1alpha1.MagicIPSpec) {
			if *got.Inject.Env || len(got.Inject.ExtraEnv) != 3 || !reflect.DeepEqual(got.Inject.PodIdentity, full.Inject.PodIdentity) || got.Ports[1].EffectiveTargetPort() != 18125 || got.WhenNoLocalProducer != v1alpha1.Drop {
				t.Errorf("explicit values not kept: %+v", got)
			}
		}},
		"fallback": {func() v1alpha1.MagicIPSpec { s := validSpec(); s.WhenNoLocalProducer = v1alpha1.Fallback; return s }(), func(t *testing.T, got v1alpha1.MagicIPSpec) {
			if got.WhenNoLocalProducer != v1alpha1.Fallback {
				t.Errorf("whenNoLocalProducer %q, want Fallback", got.WhenNoLocalProducer)
			}
		}},
		"ipv6 link-local": {ipv6, nil},
		"dual-stack": {dual, func(t *testing.T, got v1alpha1.MagicIPSpec) {
			if got.Address != dual.Address || got.IPv6Address != dual.IPv6Address || !reflect.DeepEqual(got.Inject.ExtraEnv, dual.Inject.ExtraEnv) {
				t.Errorf("dual-stack spec not kept: %+v", got)
			}
		}},
		"dual-stack link-local":               {dualLinkLocal, nil},
		"same as minimal":                     {same, nil},
		"public unicast":                      {func() v1alpha1.MagicIPSpec { s := validSpec(); s.Address = "10.96.0.10"; return s }(), nil},
		"a neighbour of the metadata address": {func() v1alpha1.MagicIPSpec { s := validSpec(); s.Address = "169.254.169.250"; return s }(), nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{GenerateName: "valid-"}, Spec: tc.spec}
			if err := cp.Client.Create(t.Context(), mip); err != nil {
				t.Fatalf("create: %v", err)
			}
			got := &v1alpha1.MagicIP{}
			if err := cp.Client.Get(t.Context(), client.ObjectKeyFromObject(mip), got); err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, got.Spec)
			}
		})
	}
	out, err := cp.Kubectl("get", "mip", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	for _, col := range []string{"ADDRESS", "IPV6-ADDRESS", "PORTS", "PROGRAMMED", "LOCAL-PRODUCERS", "FAILING", "PRODUCER", "ACCEPTED", "AGE", "169.254.210.210", "fe80::a9fe:d2d2", "fd00::a9fe:d2d2", "datadog"} {
		if !strings.Contains(out, col) {
			t.Errorf("kubectl get mip: no %q in\n%s", col, out)
		}
	}
}
