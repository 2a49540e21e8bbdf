package bench

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// BenchmarkPeersAPILoad: what the API server serves, per node and per minute, while nothing
// changes: N magic-ip agents (one per simulated node, each in a network namespace of its own with
// a cni0 bridge, as on a node) against N copies of the 5 s poller's API side (every 5 s, LIST the
// producer pods cluster-wide — what the seed's kubectl call does; its iptables half costs the API
// nothing and is left out), on N nodes × 20 pods.
//
// How it counts: every client reaches the API server through a counting reverse proxy (one
// listener per agent, inside its namespace; one for the pollers), which terminates plain HTTP,
// forwards with the admin credentials, and counts requests (watches apart) and body bytes both
// ways — watch streams included, byte by byte as they flow. Counting at the one place all
// traffic crosses needs no cooperation from the clients and sees exactly what the API server
// serves them.
func BenchmarkPeersAPILoad(b *testing.B) {
	nodes, window := trials(50, 5), time.Duration(trials(60, 5))*time.Second
	const podsPerNode = 20
	harness.RequireRoot(b)
	cp := harness.StartControlPlane(b)
	ctx := b.Context()
	if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "load"}}); err != nil {
		b.Fatal(err)
	}
	nodeName := func(i int) string { return fmt.Sprintf("load-node-%02d", i) }
	// Each agent's Node exists, as in a cluster: the agent writes its Programmed condition to it and
	// owns its MagicIPNode record through it (without one, both writes fail and are retried with
	// backoff, requests a real node never makes).
	for i := range nodes {
		if err := cp.Client.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i)}}); err != nil {
			b.Fatal(err)
		}
	}
	if err := createLoadPods(ctx, cp, nodes, podsPerNode, nodeName); err != nil {
		b.Fatal(err)
	}
	mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "load"}, Spec: v1alpha1.MagicIPSpec{
		Address: magicAddr, Ports: []v1alpha1.MagicIPPort{{Name: "apm", Port: port}},
		Producer: v1alpha1.Producer{Namespace: "load", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm"}}},
	}}
	if err := cp.Client.Create(ctx, mip); err != nil {
		b.Fatal(err)
	}

	agents, pollers := &apiCounter{}, &apiCounter{}
	proxy := newCountingProxy(b, cp.Config)
	dir := b.TempDir()

	// Agents: a namespace per node with a cni0 bridge, a counting listener inside it.
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	start := time.Now()
	for i := range nodes {
		ns, err := harness.NewNetns(fmt.Sprintf("%s-load%02d", harness.RunPrefix(), i))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = ns.Delete() })
		for _, args := range [][]string{{"link", "add", "cni0", "type", "bridge"}, {"link", "set", "cni0", "up"}} {
			if _, err := ns.Run(ctx, "ip", args...); err != nil {
				b.Fatal(err)
			}
		}
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
			b.Fatal(err)
		}
		proxy.serve(ln, agents)
		kc := writeKubeconfig(b, dir, fmt.Sprintf("agent%02d", i), ln.Addr().String())
		ns.StartProcess(b, "agent "+nodeName(i), agentBin, "--node-name", nodeName(i), "--kubeconfig", kc,
			"--host-interface", "cni0", "--metrics-bind-address", "0", "--health-probe-bind-address", "127.0.0.1:9403", "-v", "0",
			// No uplink here (the Node has no address): naming it spares the agent its Node lookup.
			"--external-interfaces", "eth0")
		wg.Go(func() { errs <- harness.WaitAgentReady(ctx, ns, 90*time.Second) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	startup := agents.snapshot()
	b.Logf("API load: %d agents ready in %s", nodes, time.Since(start).Round(time.Millisecond))

	// Pollers, with random phases as on independent nodes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	proxy.serve(ln, pollers)
	pctx, stopPollers := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	var listed atomic.Int64
	for range nodes {
		// A client each, as each node's poller is a process of its own (one shared client would
		// also share client-go's 5 requests/s limit and throttle them all).
		pcl, err := client.New(&rest.Config{Host: "http://" + ln.Addr().String()}, client.Options{Scheme: cp.Scheme})
		if err != nil {
			b.Fatal(err)
		}
		pwg.Go(func() {
			select {
			case <-time.After(rand.N(5 * time.Second)):
			case <-pctx.Done():
				return
			}
			tick := time.NewTicker(5 * time.Second)
			defer tick.Stop()
			for {
				var pods corev1.PodList
				if err := pcl.List(pctx, &pods, client.MatchingLabels{"app": "apm"}); err == nil {
					listed.Add(1)
				}
				select {
				case <-pctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	defer func() { stopPollers(); pwg.Wait() }()
	// Every poller has listed once (all phases under way): the idle window starts.
	for listed.Load() < int64(nodes) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
	}
	a0, p0 := agents.snapshot(), pollers.snapshot()
	select {
	case <-time.After(window):
	case <-ctx.Done():
		b.Fatal(ctx.Err())
	}
	a1, p1 := agents.snapshot(), pollers.snapshot()
	stopPollers()
	pwg.Wait()

	sc := fmt.Sprintf("peers: API load, idle, %d nodes × %d pods (%s window; counted by a reverse proxy in front of the API server)", nodes, podsPerNode, window)
	perMin := func(v float64) float64 { return v / float64(nodes) / window.Minutes() }
	ad, pd := a1.minus(a0), p1.minus(p0)
	record(row{Scenario: sc, Figure: fmt.Sprintf("magic-ip agent: start-up requests per node (%d LIST, %d WATCH, %d other)", startup.lists/int64(nodes), startup.watches/int64(nodes), startup.other/int64(nodes)), Value: float64(startup.requests()) / float64(nodes), Unit: "requests"})
	record(row{Scenario: sc, Figure: "magic-ip agent: start-up bytes per node", Value: float64(startup.bytes) / float64(nodes) / 1024, Unit: "KiB"})
	agentRate, pollerRate := perMin(float64(ad.requests())), perMin(float64(pd.requests()))
	goal(sc, fmt.Sprintf("magic-ip agent: requests per node per minute (%d in the window)", ad.requests()), agentRate, "/node/min",
		fmt.Sprintf("≤ 1%% of the poller's (%s)", trim(pollerRate/100)), agentRate <= pollerRate/100)
	record(row{Scenario: sc, Figure: "magic-ip agent: bytes per node per minute (watch streams included)", Value: perMin(float64(ad.bytes)) / 1024, Unit: "KiB/node/min"})
	record(row{Scenario: sc, Figure: fmt.Sprintf("5 s poller: requests per node per minute (%d in the window)", pd.requests()), Value: pollerRate, Unit: "/node/min"})
	record(row{Scenario: sc, Figure: "5 s poller: bytes per node per minute", Value: perMin(float64(pd.bytes)) / 1024, Unit: "KiB/node/min"})
	if ad.requests() > 0 {
		record(row{Scenario: sc, Figure: "requests, poller / agent", Value: float64(pd.requests()) / float64(ad.requests()), Unit: "×"})
	}
	if ad.bytes > 0 {
		record(row{Scenario: sc, Figure: "bytes, poller / agent", Value: float64(pd.bytes) / float64(ad.bytes), Unit: "×"})
	}
}

// createLoadPods creates nodes × perNode pods in namespace load: on each node one producer
// (app=apm, Running and Ready with a pod IP, as the agents and pollers would find it) and
// perNode-1 other pods.
func createLoadPods(ctx context.Context, cp *harness.ControlPlane, nodes, perNode int, nodeName func(int) string) error {
	work := make(chan int)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				n, k := i/perNode, i%perNode
				app := "other"
				if k == 0 {
					app = "apm"
				}
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "load", Name: fmt.Sprintf("pod-%02d-%02d", n, k), Labels: map[string]string{"app": app}},
					Spec:       corev1.PodSpec{NodeName: nodeName(n), Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
				}
				err := cp.Client.Create(ctx, pod)
				if err == nil && k == 0 {
					pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.244.%d.10", n), PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.244.%d.10", n)}},
						Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
					err = cp.Client.Status().Update(ctx, pod)
				}
				if err != nil {
					mu.Lock()
					first = cmpErr(first, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range nodes * perNode {
		work <- i
	}
	close(work)
	wg.Wait()
	return first
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func writeKubeconfig(b *testing.B, dir, name, addr string) string {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: counted
  cluster:
    server: http://%s
users:
- name: via-proxy
  user: {}
contexts:
- name: counted
  context: {cluster: counted, user: via-proxy}
current-context: counted
`, addr)
	path := filepath.Join(dir, name+".kubeconfig")
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// apiCounter counts requests and body bytes (both ways) through a countingProxy.
type apiCounter struct {
	lists, watches, other atomic.Int64
	bytes                 atomic.Int64
}

type apiCount struct{ lists, watches, other, bytes int64 }

func (c *apiCounter) snapshot() apiCount {
	return apiCount{c.lists.Load(), c.watches.Load(), c.other.Load(), c.bytes.Load()}
}

func (a apiCount) minus(b apiCount) apiCount {
	return apiCount{a.lists - b.lists, a.watches - b.watches, a.other - b.other, a.bytes - b.bytes}
}

func (a apiCount) requests() int64 { return a.lists + a.watches + a.other }

// countingProxy forwards plain-HTTP requests to the API server with the admin credentials.
type countingProxy struct {
	rp      *httputil.ReverseProxy
	servers []*http.Server
}

func newCountingProxy(b *testing.B, cfg *rest.Config) *countingProxy {
	target, err := url.Parse(cfg.Host)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	p := &countingProxy{rp: &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.Out.Host = target.Host },
		Transport:     tr,
		FlushInterval: -1, // stream watch events as they come
		ErrorLog:      log.New(io.Discard, "", 0),
	}}
	b.Cleanup(func() {
		for _, s := range p.servers {
			_ = s.Close()
		}
	})
	return p
}

// serve counts into ctr what goes through ln.
func (p *countingProxy) serve(ln net.Listener, ctr *apiCounter) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && (r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" || strings.Contains(r.URL.Path, "/watch/")):
			ctr.watches.Add(1)
		case r.Method == http.MethodGet:
			ctr.lists.Add(1) // LIST or GET
		default:
			ctr.other.Add(1)
		}
		if r.Body != nil {
			r.Body = &countingBody{ReadCloser: r.Body, n: &ctr.bytes}
		}
		p.rp.ServeHTTP(&countingWriter{ResponseWriter: w, n: &ctr.bytes}, r)
	})
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	p.servers = append(p.servers, s)
	go func() { _ = s.Serve(ln) }()
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Unwrap lets http.ResponseController flush the underlying writer (watch streaming).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
