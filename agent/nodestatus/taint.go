package nodestatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ParseTaint reads a taint written as kubectl and the kubelet's --register-with-taints write it:
// key[=value]:Effect, e.g. magic-ip.dev/agent-not-ready:NoSchedule.
func ParseTaint(s string) (corev1.Taint, error) {
	kv, effect, ok := strings.Cut(s, ":")
	if !ok {
		return corev1.Taint{}, fmt.Errorf("taint %q: want key[=value]:Effect", s)
	}
	key, value, _ := strings.Cut(kv, "=")
	t := corev1.Taint{Key: key, Value: value, Effect: corev1.TaintEffect(effect)}
	var errs []error
	for _, msg := range validation.IsQualifiedName(key) {
		errs = append(errs, fmt.Errorf("key %q: %s", key, msg))
	}
	if value != "" {
		for _, msg := range validation.IsValidLabelValue(value) {
			errs = append(errs, fmt.Errorf("value %q: %s", value, msg))
		}
	}
	effects := []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute}
	if !slices.Contains(effects, t.Effect) {
		errs = append(errs, fmt.Errorf("effect %q: want one of %v", effect, effects))
	}
	if err := errors.Join(errs...); err != nil {
		return corev1.Taint{}, fmt.Errorf("taint %q: %w", s, err)
	}
	return t, nil
}

// TaintString writes t as ParseTaint reads it.
func TaintString(t corev1.Taint) string {
	if t.Value == "" {
		return fmt.Sprintf("%s:%s", t.Key, t.Effect)
	}
	return fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect)
}

// withoutTaint returns the node's taints without t (same key and effect, whatever the value), and
// whether t was there.
func withoutTaint(node *corev1.Node, t corev1.Taint) ([]corev1.Taint, bool) {
	rest := slices.DeleteFunc(slices.Clone(node.Spec.Taints), func(x corev1.Taint) bool {
		return x.Key == t.Key && x.Effect == t.Effect
	})
	return rest, len(rest) != len(node.Spec.Taints)
}

// taintsPatch is the JSON merge patch that sets the node's taints to rest, on condition that the
// node is still at the resourceVersion they were computed from (taints are a list replaced whole:
// without the precondition a taint added meanwhile would be lost).
func taintsPatch(node *corev1.Node, rest []corev1.Taint) ([]byte, error) {
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": node.ResourceVersion},
		"spec":     map[string]any{"taints": rest},
	})
}
