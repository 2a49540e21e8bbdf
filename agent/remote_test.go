package agent

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestDesiredPreparesWriteDuringList: when a sync starts the watch of other nodes' producers, the
// datapath prepares its write while the first list is awaited (not after it), and the State
// computed once the list is in holds the remote producer.
func TestDesiredPreparesWriteDuringList(t *testing.T) {
	listed := make(chan struct{})
	dp := &preparingDatapath{prepared: make(chan struct{}, 1)}
	remote := readyPod("rb", []string{"10.244.2.5"}, onNode("node-b"))
	c := NewController(ControllerConfig{
		MagicIPs: cache.NewStore(cache.MetaNamespaceKeyFunc), Pods: cache.NewStore(cache.MetaNamespaceKeyFunc),
		Syncer: &Syncer{Datapath: dp}, NodeName: testNode, DefaultInterface: testIface, Log: testr.New(t),
		RemoteInformer: func(string, string) (cache.SharedIndexInformer, error) {
			lw := &cache.ListWatch{
				ListWithContextFunc: func(ctx context.Context, _ metav1.ListOptions) (runtime.Object, error) {
					select {
					case <-listed:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					return &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "7"}, Items: []corev1.Pod{remote}}, nil
				},
				WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil },
			}
			return cache.NewSharedIndexInformer(plainList{lw}, &corev1.Pod{}, 0, cache.Indexers{}), nil
		},
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	m := newMagicIP("datadog", testAddr, 0, withWhenNoLocal(v1alpha1.Fallback))
	got := make(chan State, 1)
	go func() { got <- c.desired(ctx, []v1alpha1.MagicIP{m}) }()
	select {
	case <-dp.prepared:
	case <-time.After(5 * time.Second):
		t.Fatal("the datapath was not prepared while the remote list was awaited")
	}
	close(listed)
	st := <-got
	if eps, want := endpointsOf(t, st), []Endpoint{rep("rb", "10.244.2.5:8126", "node-b")}; !reflect.DeepEqual(eps, want) {
		t.Errorf("endpoints once listed: %v, want %v", eps, want)
	}
}

// preparingDatapath reports Prepare calls; no other method is used here.
type preparingDatapath struct {
	Datapath
	prepared chan struct{}
}

func (d *preparingDatapath) Prepare(context.Context) { d.prepared <- struct{}{} }

// plainList is a ListWatch the reflector lists then watches (no streaming list), as
// kube.ProducerInformer's.
type plainList struct{ *cache.ListWatch }

func (plainList) IsWatchListSemanticsUnSupported() bool { return true }
