package e2e

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentClientsProtobuf: the agent's pod and Node requests travel as protobuf, as kubelet's and
// kube-proxy's do (the API server then encodes a pod change once for the EndpointSlice controller
// and the agents, and both ends spend less CPU than on JSON); its MagicIP requests stay JSON (a
// custom resource has no protobuf). Shown on a real API server: the answers' content types to the
// agent's informers and a Node read, each decoded, and a missing Node still an IsNotFound error.
func TestAgentClientsProtobuf(t *testing.T) {
	cp := harness.StartControlPlane(t)
	ctx := t.Context()
	if err := cp.CreatePodObjects(ctx, "apm", map[string]string{"app": "apm"}, map[string]string{"here": "node-1", "there": "node-2"}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Create(ctx, &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "apm"}, Spec: v1alpha1.MagicIPSpec{
		Address: "169.254.20.10", Ports: []v1alpha1.MagicIPPort{{Name: "apm", Port: 8126}},
		Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm"}}}}}); err != nil {
		t.Fatal(err)
	}
	rec := &answerTypes{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.Wrap(rec.wrap)
	clients, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := kube.PodInformer(clients.Core, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	mips, err := kube.MagicIPInformer(clients.MagicIP)
	if err != nil {
		t.Fatal(err)
	}
	go pods.RunWithContext(ctx)
	go mips.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced, mips.HasSynced) {
		t.Fatal("informers never synced")
	}
	if got := kube.List[corev1.Pod](pods.GetStore()); len(got) != 1 || got[0].Name != "here" || got[0].Labels["app"] != "apm" {
		t.Errorf("pod informer holds %+v, want node 1's pod apm/here with its labels", got)
	}
	if got := kube.List[v1alpha1.MagicIP](mips.GetStore()); len(got) != 1 || got[0].Spec.Address != "169.254.20.10" {
		t.Errorf("MagicIP informer holds %+v, want MagicIP apm", got)
	}
	var node corev1.Node
	if err := clients.Core.Get().Resource("nodes").Name("no-such-node").Do(ctx).Into(&node); !apierrors.IsNotFound(err) {
		t.Errorf("get a missing Node: %v, want a NotFound error", err)
	}
	for _, want := range []struct{ path, contentType string }{
		{"/api/v1/pods", "application/vnd.kubernetes.protobuf"},
		{"/api/v1/nodes/no-such-node", "application/vnd.kubernetes.protobuf"},
		{"/apis/magic-ip.dev/v1alpha1/magicips", "application/json"},
	} {
		got := rec.types(want.path)
		if len(got) == 0 {
			t.Errorf("no answer to %s recorded", want.path)
		}
		for _, ct := range got {
			if !strings.HasPrefix(ct, want.contentType) {
				t.Errorf("%s answered as %q, want %s (all answers: %v)", want.path, ct, want.contentType, got)
			}
		}
	}
}

// answerTypes records the content type of every answer a client receives, by path.
type answerTypes struct {
	mu sync.Mutex
	by map[string][]string
}

func (r *answerTypes) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := next.RoundTrip(req)
		if err == nil {
			r.mu.Lock()
			if r.by == nil {
				r.by = map[string][]string{}
			}
			r.by[req.URL.Path] = append(r.by[req.URL.Path], resp.Header.Get("Content-Type"))
			r.mu.Unlock()
		}
		return resp, err
	})
}

func (r *answerTypes) types(path string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.by[path]...)
}
