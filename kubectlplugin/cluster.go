// Package kubectlplugin is `kubectl magic-ip`: it reads MagicIPs, the agents' per-node records
// (MagicIPNode) and pods from the API, never anything else (no exec into nodes), with the rights
// of a read-only user, and says per node what is programmed and, for one consumer pod, where its
// connections to each magic address go.
package kubectlplugin

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// DefaultAgentSelector selects the agent pods of the kustomize manifests and the Helm chart.
const DefaultAgentSelector = "app.kubernetes.io/name=magic-ip,app.kubernetes.io/component=agent"

// Scheme holds the types the plugin reads.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(s), v1alpha1.AddToScheme(s)); err != nil {
		return nil, fmt.Errorf("build scheme: %w", err)
	}
	return s, nil
}

// Snapshot is what the plugin read from the cluster.
type Snapshot struct {
	MagicIPs []v1alpha1.MagicIP
	Records  []v1alpha1.MagicIPNode
	// AgentPods by node name (the newest when a node has several).
	AgentPods map[string]*corev1.Pod
}

// Read lists MagicIPs, MagicIPNode records and the agent pods (selector, in every namespace
// unless namespace is set).
func Read(ctx context.Context, c client.Reader, selector, namespace string) (*Snapshot, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("--agent-selector %q: %w", selector, err)
	}
	var mips v1alpha1.MagicIPList
	if err := c.List(ctx, &mips); err != nil {
		return nil, fmt.Errorf("list MagicIPs: %w", err)
	}
	var recs v1alpha1.MagicIPNodeList
	if err := c.List(ctx, &recs); err != nil {
		return nil, fmt.Errorf("list MagicIPNodes (the agents' per-node records): %w", err)
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingLabelsSelector{Selector: sel}, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list agent pods (%s): %w", selector, err)
	}
	s := &Snapshot{MagicIPs: mips.Items, Records: recs.Items, AgentPods: map[string]*corev1.Pod{}}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == "" {
			continue
		}
		if old, ok := s.AgentPods[p.Spec.NodeName]; !ok || old.CreationTimestamp.Before(&p.CreationTimestamp) {
			s.AgentPods[p.Spec.NodeName] = p
		}
	}
	return s, nil
}

// Record returns the record of node, or nil.
func (s *Snapshot) Record(node string) *v1alpha1.MagicIPNode {
	for i := range s.Records {
		if s.Records[i].Name == node {
			return &s.Records[i]
		}
	}
	return nil
}

// MagicIP returns the MagicIP named name, or nil.
func (s *Snapshot) MagicIP(name string) *v1alpha1.MagicIP {
	for i := range s.MagicIPs {
		if s.MagicIPs[i].Name == name {
			return &s.MagicIPs[i]
		}
	}
	return nil
}
