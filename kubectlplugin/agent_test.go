package kubectlplugin

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestAgentState(t *testing.T) {
	t0 := metav1.NewTime(time.Unix(1000, 0))
	t1 := metav1.NewTime(time.Unix(1010, 0))
	pod := func(ready bool, started metav1.Time) *corev1.Pod {
		s := corev1.ConditionFalse
		if ready {
			s = corev1.ConditionTrue
		}
		return &corev1.Pod{Status: corev1.PodStatus{
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: s}},
			ContainerStatuses: []corev1.ContainerStatus{{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}},
		}}
	}
	rec := func(agentStart metav1.Time) *v1alpha1.MagicIPNode {
		return &v1alpha1.MagicIPNode{AgentStartTime: &agentStart}
	}
	tests := map[string]struct {
		pod  *corev1.Pod
		rec  *v1alpha1.MagicIPNode
		want string
	}{
		"no agent pod":                           {nil, rec(t0), AgentDown},
		"agent pod not Ready":                    {pod(false, t0), rec(t0), AgentDown},
		"no record":                              {pod(true, t0), nil, AgentNotReported},
		"record older than the agent pod":        {pod(true, t1), rec(t0), AgentNotReported},
		"record of the running agent":            {pod(true, t0), rec(t1), AgentReady},
		"record of an agent started that second": {pod(true, t0), rec(t0), AgentReady},
	}
	for name, tc := range tests {
		if got := agentState(tc.pod, tc.rec); got.State != tc.want {
			t.Errorf("%s: %+v, want %s", name, got, tc.want)
		}
	}
}
