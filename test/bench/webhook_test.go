package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/certs"
	"github.com/magic-ip/magic-ip/test/harness"
	"github.com/magic-ip/magic-ip/webhook"
)

// webhookBin and noopBin are built in TestMain next to agentBin.
var webhookBin, noopBin string

// BenchmarkWebhook: handler latency at 1,000 AdmissionReviews/s over HTTPS keep-alive, against a
// no-op admission handler measured the same way in the same run; pod creation through the API
// server with the webhook, without any webhook, with the no-op webhook in the path (the API
// server's own cost of calling a webhook), and with a no-op that returns the patch ours returns (the
// API server's cost of applying it); the webhook's RSS after the load.
func BenchmarkWebhook(b *testing.B) {
	cp := harness.StartControlPlane(b)
	ctx := b.Context()
	for name, labels := range map[string]map[string]string{
		"apps": {"magic-ip.dev/inject": "enabled"}, "plain": nil, "noop": {noopLabel: "enabled"}, "patch": {patchLabel: "enabled"},
	} {
		if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
			b.Fatal(err)
		}
	}
	mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "datadog"}, Spec: v1alpha1.MagicIPSpec{
		Address: magicAddr, Ports: []v1alpha1.MagicIPPort{{Name: "apm", Port: 8126}, {Name: "dogstatsd", Port: 8125, Protocol: "UDP"}},
		Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "dd"}}},
		Inject:   v1alpha1.Inject{ExtraEnv: []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}}, Hostnames: []string{"datadog.node.local"}},
	}}
	if err := cp.Client.Create(ctx, mip); err != nil {
		b.Fatal(err)
	}
	wh := harness.StartWebhook(b, cp, webhookBin)
	noop := startNoop(b, wh.CA, ourPatch(b, *mip))

	// One second at a time, alternating, so both handlers see the same neighbours on the box.
	body := reviewBody(b)
	var ours, base []time.Duration
	var oursP99, baseP99 []float64 // of each second: how much the box alone moves the figure
	for range trials(20, 1) {
		o := load(b, fmt.Sprintf("https://127.0.0.1:%d/mutate-v1-pod", wh.Port), wh.CA, body, 1)
		n := load(b, noop+"mutate", wh.CA, body, 1)
		ours, base = append(ours, o...), append(base, n...)
		oursP99, baseP99 = append(oursP99, percentile(o, 99)), append(baseP99, percentile(n, 99))
	}
	const sc = "webhook handler at 1,000 req/s (HTTPS keep-alive)"
	p50, p99, b99 := percentile(ours, 50), percentile(ours, 99), percentile(base, 99)
	record(row{Scenario: sc, Figure: fmt.Sprintf("magic-ip p50 (%d requests)", len(ours)), Value: p50, Unit: "ms"})
	goal(sc, "magic-ip p99", p99, "ms", "≤ 2 ms", p99 <= 2)
	record(row{Scenario: sc, Figure: "no-op handler p50", Value: percentile(base, 50), Unit: "ms"})
	record(row{Scenario: sc, Figure: "no-op handler p99", Value: b99, Unit: "ms"})
	goal(sc, "p99 ratio to no-op", p99/b99, "×", "≤ 1.3×", p99/b99 <= 1.3)
	ratios := make([]float64, len(oursP99))
	for i := range ratios {
		ratios[i] = oursP99[i] / baseP99[i]
	}
	slices.Sort(ratios)
	record(row{Scenario: sc, Figure: fmt.Sprintf("median of the %d per-second p99 ratios (p99 of each second: magic-ip %.2f–%.2f ms, no-op %.2f–%.2f ms)",
		len(ratios), slices.Min(oursP99), slices.Max(oursP99), slices.Min(baseP99), slices.Max(baseP99)), Value: ratios[len(ratios)/2], Unit: "×"})
	if rss, err := procStatus(wh.Process.Pid(), "VmRSS"); err == nil {
		goal("webhook memory", "RSS after the load", rss, "MiB", "≤ 40 MiB", rss <= 40)
	}
	for _, field := range []string{"RssAnon", "RssFile"} {
		if x, err := procStatus(wh.Process.Pid(), field); err == nil {
			record(row{Scenario: "webhook memory", Figure: field + " (of RSS)", Value: x, Unit: "MiB"})
		}
	}

	const sc2 = "pod create through the API server"
	registerNoop(b, cp, "noop", noopLabel, noop+"mutate", wh.CA)
	registerNoop(b, cp, "patch", patchLabel, noop+"patch", wh.CA)
	n := trials(1000, 50)
	connsBefore := noopConnections(b, noop, wh.CA)
	ds := podCreates(b, cp, n, "apps", "plain", "noop", "patch")
	record(row{Scenario: sc2, Figure: fmt.Sprintf("connections the API server opened to the no-op webhook for %d calls", 2*(n+20)),
		Value: float64(noopConnections(b, noop, wh.CA) - connsBefore - 1), Unit: ""})
	for _, s := range []struct{ ns, name string }{
		{"apps", fmt.Sprintf("with the webhook (%d pods)", n)}, {"plain", "without a webhook (namespace not opted in)"},
		{"noop", "with the no-op webhook"}, {"patch", "with the no-op webhook returning magic-ip's patch"},
	} {
		record(row{Scenario: sc2, Figure: "p50 " + s.name, Value: percentile(ds[s.ns], 50), Unit: "ms"})
		record(row{Scenario: sc2, Figure: "p99 " + s.name, Value: percentile(ds[s.ns], 99), Unit: "ms"})
	}
	podCreateRatios(ds)
}

// podCreateRatios records, at p50 and p99, pod creation with our webhook (ds["apps"]) against
// creation through the no-op webhook registered the same way (ds["noop"]; the target: what
// magic-ip adds to what any webhook costs), and both against creation without a webhook
// (ds["plain"]; reported, no target: the API server's cost of calling a webhook at all, 1.2–1.5× at
// p99 on the 2-core VM, is not ours to cut). The no-op returning our patch (ds["patch"]) splits
// our share into the API server's cost of applying that patch and our handler's.
func podCreateRatios(ds map[string][]time.Duration) {
	const sc = "pod create through the API server"
	for _, q := range []float64{50, 99} {
		w, wo, n, p := percentile(ds["apps"], q), percentile(ds["plain"], q), percentile(ds["noop"], q), percentile(ds["patch"], q)
		goal(sc, fmt.Sprintf("p%.0f ratio with / no-op webhook (magic-ip's share)", q), w/n, "×", "≤ 1.05×", w/n <= 1.05)
		record(row{Scenario: sc, Figure: fmt.Sprintf("p%.0f ratio with / without", q), Value: w / wo, Unit: "×"})
		record(row{Scenario: sc, Figure: fmt.Sprintf("p%.0f ratio no-op webhook / without (the API server's share)", q), Value: n / wo, Unit: "×"})
		record(row{Scenario: sc, Figure: fmt.Sprintf("p%.0f ratio no-op returning our patch / no-op (applying the patch)", q), Value: p / n, Unit: "×"})
		record(row{Scenario: sc, Figure: fmt.Sprintf("p%.0f ratio with / no-op returning our patch (our handler)", q), Value: w / p, Unit: "×"})
	}
}

// noopConnections is how many connections the no-op webhook has accepted (this query's own included).
func noopConnections(b *testing.B, url string, ca *certs.CA) int {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := hc.Get(url + "connections")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var n int
	if _, err := fmt.Fscan(resp.Body, &n); err != nil {
		b.Fatalf("no-op webhook /connections: %v", err)
	}
	return n
}

// noopLabel opts a namespace in to the no-op webhook, patchLabel to the no-op returning our patch.
const (
	noopLabel  = "bench.magic-ip.dev/noop"
	patchLabel = "bench.magic-ip.dev/patch"
)

// registerNoop registers the no-op webhook at url like the shipped configuration registers ours,
// as bench-<name>, for the namespaces labelled label.
func registerNoop(b *testing.B, cp *harness.ControlPlane, name, label, url string, ca *certs.CA) {
	cfg, err := cp.WebhookConfiguration("bench-"+name, url, ca.CertPEM)
	if err != nil {
		b.Fatal(err)
	}
	for i := range cfg.Webhooks {
		cfg.Webhooks[i].Name = name + ".bench.magic-ip.dev"
		cfg.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{label: "enabled"}}
		cfg.Webhooks[i].ObjectSelector = nil
	}
	if err := cp.Client.Create(b.Context(), cfg); err != nil {
		b.Fatalf("register the no-op webhook: %v", err)
	}
	b.Cleanup(func() { _ = cp.Client.Delete(context.Background(), cfg) })
}

// ourPatch writes to a file the JSON patch magic-ip's handler answers for podCreates' pod with
// mip, the only MagicIP, and returns its path.
func ourPatch(b *testing.B, mip v1alpha1.MagicIP) string {
	raw, err := json.Marshal(benchPod("apps"))
	if err != nil {
		b.Fatal(err)
	}
	pod, err := webhook.DecodePod(raw)
	if err != nil {
		b.Fatal(err)
	}
	before := webhook.ShapeOf(pod)
	if !webhook.Mutate(pod, webhook.NewCatalog([]v1alpha1.MagicIP{mip}).For(pod.Annotations)) {
		b.Fatal("magic-ip's handler would not change the benchmark's pod")
	}
	patch, err := webhook.EncodePatch(webhook.Patch(before, pod))
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "patch.json")
	if err := os.WriteFile(file, patch, 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// reviewBody is an AdmissionReview for a typical two-container pod in an opted-in namespace.
func reviewBody(b *testing.B) []byte {
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-","namespace":"apps","labels":{"app":"web"}},` +
		`"spec":{"containers":[{"name":"app","image":"registry.invalid/app:1","env":[{"name":"A","value":"1"}]},{"name":"side","image":"registry.invalid/side:1"}]}}`
	return fmt.Appendf(nil, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"00000000-0000-0000-0000-000000000001",`+
		`"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","namespace":"apps","object":%s}}`, pod)
}

// startNoop runs the baseline webhook process (test/bench/noopwebhook): it allows everything,
// served by the same controller-runtime webhook server and TLS settings as ours, in its own
// process. It returns the base URL; the no-op handler is at mutate, the one that returns the patch
// in patchFile at patch, the connection count at connections.
func startNoop(b *testing.B, ca *certs.CA, patchFile string) string {
	dir := b.TempDir()
	if _, err := certs.Generate(dir, certs.Options{Hosts: []string{"127.0.0.1"}, CA: ca}); err != nil {
		b.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	p := harness.StartHostProcess(b, "noop webhook", noopBin, "--cert-dir", dir, "--port", strconv.Itoa(port), "--patch-file", patchFile)
	url := fmt.Sprintf("https://127.0.0.1:%d/", port)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}, Timeout: time.Second}
	defer hc.CloseIdleConnections()
	err = wait.PollUntilContextTimeout(b.Context(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("exited: %s", p.Output())
		}
		resp, err := hc.Get(url + "connections")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return true, nil
	})
	if err != nil {
		b.Fatalf("noop webhook not serving: %v", err)
	}
	return url
}

// load sends body to url at 1,000 requests/s for the given seconds over 8 keep-alive
// connections and returns each request's latency.
func load(b *testing.B, url string, ca *certs.CA, body []byte, seconds int) []time.Duration {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, MaxIdleConnsPerHost: 8, MaxConnsPerHost: 8,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	send := func() (time.Duration, error) {
		start := time.Now()
		resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return time.Since(start), nil
	}
	for range 200 { // warm up connections and caches
		if _, err := send(); err != nil {
			b.Fatal(err)
		}
	}
	var (
		mu   sync.Mutex
		out  []time.Duration
		errs int
		wg   sync.WaitGroup
	)
	// The load generator's own GC pauses would add to both handlers' tails: none while it runs
	// (a few MB of garbage per second).
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	out = make([]time.Duration, 0, seconds*1000)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for range seconds * 1000 {
		<-tick.C
		wg.Go(func() {
			d, err := send()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			out = append(out, d)
		})
	}
	wg.Wait()
	if errs > 0 {
		b.Fatalf("%d requests to %s failed", errs, url)
	}
	return out
}

// podCreates creates n pods in each namespace, one in each per round with the order rotated
// from round to round, and returns the create latencies by namespace.
func podCreates(b *testing.B, cp *harness.ControlPlane, n int, namespaces ...string) map[string][]time.Duration {
	ctx := b.Context()
	create := func(ns string) time.Duration {
		p := benchPod(ns)
		start := time.Now()
		if err := cp.Client.Create(ctx, p); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for range 20 { // warm up connections and caches
		for _, ns := range namespaces {
			create(ns)
		}
	}
	out := map[string][]time.Duration{}
	for i := range n {
		for j := range namespaces {
			ns := namespaces[(i+j)%len(namespaces)]
			out[ns] = append(out[ns], create(ns))
		}
	}
	return out
}

// benchPod is the pod podCreates creates in namespace ns.
func benchPod(ns string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "web-"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}}}
}
