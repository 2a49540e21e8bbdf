package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestHelmStartupTaint: agent.startupTaint is off by default; set, it reaches the agent as
// MAGIC_IP_STARTUP_TAINT and the agent tolerates the taint even when agent.tolerations is emptied
// (it is what removes the taint); a malformed one fails the rendering.
func TestHelmStartupTaint(t *testing.T) {
	for name, tc := range map[string]struct {
		set        []string
		wantEnv    string
		wantTolKey string
	}{
		"off by default": {},
		"set, with the chart's tolerations": {
			set: []string{"agent.startupTaint=" + startupTaint}, wantEnv: startupTaint, wantTolKey: startupTaintKey,
		},
		"set, tolerations emptied": {
			set: []string{"agent.startupTaint=" + startupTaintKey + "=yes:NoExecute", "agent.tolerations=null"}, wantEnv: startupTaintKey + "=yes:NoExecute", wantTolKey: startupTaintKey,
		},
	} {
		t.Run(name, func(t *testing.T) {
			spec := renderAgentPodSpec(t, tc.set...)
			env := ""
			for _, e := range spec.Containers[0].Env {
				if e.Name == "MAGIC_IP_STARTUP_TAINT" {
					env = e.Value
				}
			}
			if env != tc.wantEnv {
				t.Errorf("MAGIC_IP_STARTUP_TAINT %q, want %q", env, tc.wantEnv)
			}
			if tc.wantTolKey == "" {
				return
			}
			taint := corev1.Taint{Key: tc.wantTolKey, Effect: corev1.TaintEffect(tc.wantEnv[strings.LastIndex(tc.wantEnv, ":")+1:])}
			tolerated := false
			for _, tol := range spec.Tolerations {
				tolerated = tolerated || tol.ToleratesTaint(klog.Background(), &taint, false)
			}
			if !tolerated {
				t.Errorf("tolerations %+v do not tolerate %+v", spec.Tolerations, taint)
			}
		})
	}
	for _, bad := range []string{"magic-ip.dev/agent-not-ready", "k:Sometimes"} {
		if _, err := harness.HelmTemplate("mip", "magic-ip-system", "agent.startupTaint="+bad); err == nil {
			t.Errorf("agent.startupTaint=%s rendered; want an error", bad)
		}
	}
}

func renderAgentPodSpec(t *testing.T, set ...string) corev1.PodSpec {
	t.Helper()
	out, err := harness.HelmTemplate("mip", "magic-ip-system", set...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := harness.DecodeObjects(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
			t.Fatal(err)
		}
		return ds.Spec.Template.Spec
	}
	b, _ := json.Marshal(objs)
	t.Fatalf("no DaemonSet rendered: %.500s", b)
	return corev1.PodSpec{}
}
