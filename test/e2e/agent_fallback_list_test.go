package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentRemoteWatchListsFromCache: the agent's watch of producers on other nodes (started when
// a Fallback MagicIP loses its last Ready local producer) begins with a plain list at
// resourceVersion 0, which the API server answers from its watch cache at once, then watches from
// the list's version. Not a streaming list (client-go's default since 1.35: a watch with
// sendInitialEvents), which waits until the watch cache has caught up with etcd: 28-31 ms of the
// 45 ms a node took to fall back in BenchmarkFallbackRollout.
func TestAgentRemoteWatchListsFromCache(t *testing.T) {
	cp := harness.StartControlPlane(t)
	ctx := t.Context()
	if err := cp.CreatePodObjects(ctx, "apm", map[string]string{"app": "apm"}, map[string]string{"here": "node-1", "there": "node-2"}); err != nil {
		t.Fatal(err)
	}
	rec := &podRequests{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.Wrap(rec.wrap)
	clients, err := kube.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	inf, err := kube.ProducerInformer(clients.Core, "apm", "app=apm", "node-1")
	if err != nil {
		t.Fatal(err)
	}
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("producer informer never synced")
	}
	if keys := inf.GetStore().ListKeys(); len(keys) != 1 || keys[0] != "apm/there" {
		t.Errorf("informer holds %v, want only apm/there (node 2's producer)", keys)
	}
	eventually(t, 5*time.Second, "a list then a watch", func(context.Context) error {
		if n := len(rec.queries()); n < 2 {
			return fmt.Errorf("%d pod requests so far: %v", n, rec.queries())
		}
		return nil
	})
	qs := rec.queries()
	list, watch := qs[0], qs[1]
	if list.Get("watch") != "" || list.Get("resourceVersion") != "0" || list.Get("sendInitialEvents") != "" {
		t.Errorf("first pod request %q, want a plain list at resourceVersion=0 (served from the watch cache)", list.Encode())
	}
	if watch.Get("watch") != "true" || watch.Get("resourceVersion") == "" || watch.Get("resourceVersion") == "0" || watch.Get("sendInitialEvents") != "" {
		t.Errorf("second pod request %q, want a watch from the list's resourceVersion", watch.Encode())
	}
	for i, q := range qs {
		if q.Get("labelSelector") != "app=apm" || q.Get("fieldSelector") != "spec.nodeName!=node-1" {
			t.Errorf("pod request %d %q: want only app=apm on other nodes", i, q.Encode())
		}
	}
}

// podRequests records the query of every pod request a client makes.
type podRequests struct {
	mu sync.Mutex
	qs []url.Values
}

func (r *podRequests) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if strings.HasSuffix(req.URL.Path, "/pods") {
			r.mu.Lock()
			r.qs = append(r.qs, req.URL.Query())
			r.mu.Unlock()
		}
		return next.RoundTrip(req)
	})
}

func (r *podRequests) queries() []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]url.Values(nil), r.qs...)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
