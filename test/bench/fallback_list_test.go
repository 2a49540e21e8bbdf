package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/test/harness"
)

// BenchmarkRemoteFirstList measures what a node that falls back waits for: the first list of its
// watch of other nodes' producers, right after a pod write and a write to another resource (in a
// rollout: the producer's status, then the EndpointSlice controller's slice). The agent's watch
// (kube.ProducerInformer: a LIST at resourceVersion 0 from the watch cache, then a watch) against
// the same watch as a client-go streaming list (a watch with sendInitialEvents, client-go's
// default since 1.35), alternated, on one API server.
func BenchmarkRemoteFirstList(b *testing.B) {
	cp := harness.StartControlPlane(b)
	ctx := b.Context()
	if err := cp.CreatePodObjects(ctx, "apm", map[string]string{"app": "apm"}, map[string]string{"here": "node-1", "there": "node-2"}); err != nil {
		b.Fatal(err)
	}
	clients, err := kube.NewClients(cp.Config)
	if err != nil {
		b.Fatal(err)
	}
	// The node's own pod watch keeps the connection open, as in the agent.
	own, err := kube.PodInformer(clients.Core, "node-1")
	if err != nil {
		b.Fatal(err)
	}
	go own.RunWithContext(ctx)
	cache.WaitFor(ctx, "", own.HasSyncedChecker())
	ways := []struct {
		name string
		inf  func() (cache.SharedIndexInformer, error)
	}{
		{"LIST at resourceVersion 0, then a watch (the agent's)", func() (cache.SharedIndexInformer, error) {
			return kube.ProducerInformer(clients.Core, "apm", "app=apm", "node-1")
		}},
		{"streaming list (client-go's default)", func() (cache.SharedIndexInformer, error) {
			return streamingProducerInformer(clients.Core), nil
		}},
	}
	took := map[string][]time.Duration{}
	for i := range trials(40, 5) {
		for wi, w := range ways {
			d, err := firstList(ctx, cp, fmt.Sprintf("%d-%d", i, wi), w.name, w.inf)
			if err != nil {
				b.Fatal(err)
			}
			took[w.name] = append(took[w.name], d)
		}
	}
	const sc = "fallback: a node's first list of other nodes' producers, right after a pod write and a write to another resource (alternated trials, one API server)"
	for _, w := range ways {
		for _, pc := range []float64{50, 100} {
			record(row{Scenario: sc, Figure: fmt.Sprintf("%s, %s", w.name, pcName(pc)), Value: percentile(took[w.name], pc), Unit: "ms"})
		}
	}
}

// firstList writes a pod and a ConfigMap, then starts the informer and returns how long it took
// to hold its first list.
func firstList(ctx context.Context, cp *harness.ControlPlane, tag, way string, newInf func() (cache.SharedIndexInformer, error)) (time.Duration, error) {
	pod := &corev1.Pod{}
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: "apm", Name: "here"}, pod); err != nil {
		return 0, err
	}
	pod.Annotations = map[string]string{"trial": tag}
	if err := cp.Client.Update(ctx, pod); err != nil {
		return 0, err
	}
	if err := cp.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "apm", Name: "trial-" + tag}}); err != nil {
		return 0, err
	}
	inf, err := newInf()
	if err != nil {
		return 0, err
	}
	// Stopping it makes client-go log its watch's end as an error: not ours to show.
	ictx, cancel := context.WithCancel(klog.NewContext(ctx, logr.Discard()))
	defer cancel()
	start := time.Now()
	go inf.RunWithContext(ictx)
	if !cache.WaitFor(ctx, "", inf.HasSyncedChecker()) {
		return 0, fmt.Errorf("%s: never listed", way)
	}
	return time.Since(start), nil
}

// streamingProducerInformer is kube.ProducerInformer as client-go builds it by default.
func streamingProducerInformer(c rest.Interface) cache.SharedIndexInformer {
	lw := cache.NewFilteredListWatchFromClient(c, "pods", "apm", kube.ProducerListOptions("app=apm", "node-1"))
	return cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
}
