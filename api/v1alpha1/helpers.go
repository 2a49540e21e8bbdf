package v1alpha1

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EffectiveTargetPort is the producer-side port: TargetPort, or Port when TargetPort is unset.
func (p MagicIPPort) EffectiveTargetPort() int32 {
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

// EffectiveProtocol is Protocol, or TCP when unset (the API server defaults it; objects built in
// code may not have been through it).
func (p MagicIPPort) EffectiveProtocol() Protocol {
	if p.Protocol == "" {
		return ProtocolTCP
	}
	return p.Protocol
}

// EnvEnabled reports whether the standard variables are injected (default true).
func (in Inject) EnvEnabled() bool {
	return in.Env == nil || *in.Env
}

// EffectiveWhenNoLocalProducer is WhenNoLocalProducer, or Reject when unset.
func (s MagicIPSpec) EffectiveWhenNoLocalProducer() NoLocalProducerAction {
	if s.WhenNoLocalProducer == "" {
		return Reject
	}
	return s.WhenNoLocalProducer
}

// AsLabelSelector converts to the standard metav1 type (for metav1.LabelSelectorAsSelector).
func (s LabelSelector) AsLabelSelector() *metav1.LabelSelector {
	out := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: r.Key, Operator: r.Operator, Values: r.Values,
		})
	}
	return out
}

// PortSummary renders the ports for status.portSummary, e.g. "8126/TCP,8125/UDP".
func (s MagicIPSpec) PortSummary() string {
	parts := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		parts[i] = fmt.Sprintf("%d/%s", p.Port, p.EffectiveProtocol())
	}
	return strings.Join(parts, ",")
}
