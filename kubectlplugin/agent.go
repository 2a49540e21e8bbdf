package kubectlplugin

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Agent states.
const (
	// AgentReady: a Ready agent pod runs on the node and its record is newer than it.
	AgentReady = "Ready"
	// AgentDown: no agent pod on the node, or it is not Ready. The rules it left stay in place
	// but no longer follow changes; the record may be stale.
	AgentDown = "Down"
	// AgentNotReported: the running agent has not written the node's record yet (none, or older
	// than the agent pod).
	AgentNotReported = "NotReported"
)

// AgentState is what the plugin can tell about a node's agent from the API.
type AgentState struct {
	State  string `json:"state"`
	Pod    string `json:"pod,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// agentState judges node's agent from its pod and record.
func agentState(pod *corev1.Pod, rec *v1alpha1.MagicIPNode) AgentState {
	if pod == nil {
		return AgentState{State: AgentDown, Detail: "no agent pod on this node: the record (if any) may be stale, and the rules left in place no longer follow changes"}
	}
	a := AgentState{Pod: pod.Namespace + "/" + pod.Name}
	switch started := podStarted(pod); {
	case !podReady(pod):
		a.State, a.Detail = AgentDown, "agent pod not Ready: the record may be stale, and the rules left in place no longer follow changes"
	case rec == nil:
		a.State, a.Detail = AgentNotReported, "the agent has not written this node's MagicIPNode record yet"
	case started != nil && recordTime(rec) != nil && recordTime(rec).Before(started):
		a.State, a.Detail = AgentNotReported, fmt.Sprintf("the record (agent started %s) is older than the agent pod (started %s): the running agent has not reported yet",
			recordTime(rec).UTC().Format(time.RFC3339), started.UTC().Format(time.RFC3339))
	default:
		a.State = AgentReady
	}
	return a
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podStarted is when the pod's (first) container last started, else the pod's start time.
func podStarted(p *corev1.Pod) *metav1.Time {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil {
			return &cs.State.Running.StartedAt
		}
	}
	return p.Status.StartTime
}

// recordTime is when the agent that wrote rec started (or, from an agent that does not say, its
// last write).
func recordTime(rec *v1alpha1.MagicIPNode) *metav1.Time {
	if rec.AgentStartTime != nil {
		return rec.AgentStartTime
	}
	return rec.LastSyncTime
}
