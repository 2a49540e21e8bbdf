// Package nodestatus reports on the agent's own Node whether the node is programmed: a Node
// condition (ConditionType) patched only when its content changes, and, optionally, the removal of
// a startup taint once the node is first fully programmed. It also undoes both for `cleanup`.
package nodestatus

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/agent/kube"
)

// ConditionType is the Node condition the agent owns.
const ConditionType corev1.NodeConditionType = "magic-ip.dev/Programmed"

// Reasons of the condition.
const (
	// ReasonProgrammed: every MagicIP the node should serve is programmed (status True).
	ReasonProgrammed = "Programmed"
	// ReasonInterfaceUnavailable: a MagicIP's host interface is missing or refused its address.
	ReasonInterfaceUnavailable = "InterfaceUnavailable"
	// ReasonSyncFailed: the last sync failed (the rules may lag behind the API).
	ReasonSyncFailed = "SyncFailed"
)

// messageLimit bounds the condition's message, in bytes.
const messageLimit = 1024

// Status is what the agent reports about its node.
type Status struct {
	Programmed      bool
	Reason, Message string
}

// Programmed is the status of a node whose every MagicIP is programmed.
func Programmed() Status {
	return Status{Programmed: true, Reason: ReasonProgrammed, Message: "every MagicIP this node serves is programmed"}
}

// NotProgrammed is a False status with its reason and message (cut to a bounded length).
func NotProgrammed(reason, message string) Status {
	return Status{Reason: reason, Message: kube.Truncate(message, messageLimit)}
}

func (s Status) conditionStatus() corev1.ConditionStatus {
	if s.Programmed {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// Matches reports whether the condition c already says s (status, reason and message).
func (s Status) Matches(c *corev1.NodeCondition) bool {
	return c != nil && c.Status == s.conditionStatus() && c.Reason == s.Reason && c.Message == s.Message
}

// Condition is the condition that reports s at now; the transition time stays prev's when the
// status (True/False) does not change.
func (s Status) Condition(prev *corev1.NodeCondition, now time.Time) corev1.NodeCondition {
	c := corev1.NodeCondition{
		Type: ConditionType, Status: s.conditionStatus(), Reason: s.Reason, Message: s.Message,
		LastHeartbeatTime: metav1.NewTime(now), LastTransitionTime: metav1.NewTime(now),
	}
	if prev != nil && prev.Status == c.Status && !prev.LastTransitionTime.IsZero() {
		c.LastTransitionTime = prev.LastTransitionTime
	}
	return c
}

// Find returns the node's condition of our type, or nil.
func Find(node *corev1.Node) *corev1.NodeCondition {
	i := slices.IndexFunc(node.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == ConditionType })
	if i < 0 {
		return nil
	}
	return &node.Status.Conditions[i]
}

// conditionPatch is the strategic merge patch of the Node's status that sets c (conditions merge
// by type: the kubelet's and other agents' conditions are untouched).
func conditionPatch(c corev1.NodeCondition) ([]byte, error) {
	return json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{c}}})
}

// removeConditionPatch is the strategic merge patch of the Node's status that deletes our condition.
func removeConditionPatch() ([]byte, error) {
	return json.Marshal(map[string]any{"status": map[string]any{"conditions": []map[string]any{
		{"type": ConditionType, "$patch": "delete"},
	}}})
}

// String describes s for logs.
func (s Status) String() string {
	return fmt.Sprintf("%s=%s (%s: %s)", ConditionType, s.conditionStatus(), s.Reason, s.Message)
}
