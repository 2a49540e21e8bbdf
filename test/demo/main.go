// Command demo runs magic-ip on a local simulated cluster: a real kube-apiserver + etcd, three
// nodes in network namespaces, the real magic-ip-webhook and one real magic-ip-agent per node.
// It shows what consumers get and where their connections land, then a failover and an agent
// restart under load, and exits non-zero when anything did not happen as shown.
//
//	go run ./test/demo            (make demo)
//	go run ./test/demo -keep      stay up until SIGTERM/Ctrl-C (make demo KEEP=1 / make demo-down)
//	go run ./test/demo -real      the same story on two real nodes, installed by helm (make demo NODES=real)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

const (
	magicAddr  = "169.254.210.210"
	magicPort  = 9200
	targetPort = 8200
)

func main() {
	keep := flag.Bool("keep", false, "stay up after the show until SIGTERM or Ctrl-C, printing how to use kubectl")
	readyFile := flag.String("ready-file", "", "with -keep: write the kubeconfig path here once up")
	realNodes := flag.Bool("real", false, "run on two real nodes (kubelet + containerd) with our images, installed by helm (make demo NODES=real)")
	kubeProxyMode := flag.String("kube-proxy-mode", harness.KubeProxyIptables, "with -real: kube-proxy's --proxy-mode on the nodes, iptables or nftables (make demo NODES=real KUBE_PROXY=nftables); the agent's datapath (auto) follows it")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := newDemoT(ctx)
	err := d.run(func() error {
		if *realNodes {
			return showReal(d, *kubeProxyMode, *keep, *readyFile)
		}
		return show(d, *keep, *readyFile)
	})
	if cerr := d.cleanup(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) func() {
	start := time.Now()
	fmt.Printf("==> "+format+" ... ", args...)
	return func() { fmt.Printf("done (%s)\n", time.Since(start).Round(time.Millisecond)) }
}

func show(t *demoT, keep bool, readyFile string) error {
	if err := prerequisites(); err != nil {
		return err
	}
	done := step("building magic-ip-agent and magic-ip-webhook")
	agentBin, err := harness.Build(t.TempDir(), "./cmd/magic-ip-agent")
	if err != nil {
		return err
	}
	webhookBin, err := harness.Build(t.TempDir(), "./cmd/magic-ip-webhook")
	if err != nil {
		return err
	}
	done()
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	fmt.Println("==> test control plane binaries (built once from the Go module proxy, ~6 min on 2 cores, then cached)")
	assets, err := harness.AssetsDir(root)
	if err != nil {
		return err
	}
	fmt.Printf("    %s\n", assets)
	if err := os.Setenv("KUBEBUILDER_ASSETS", assets); err != nil {
		return err
	}
	done = step("starting kube-apiserver v1.37.2 + etcd v3.7.3")
	cp := harness.StartControlPlane(t)
	done()
	done = step("3 nodes: network namespaces with a cni0 bridge, 10.244.<i>.0/24")
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 3, Name: "demo"})
	done()
	done = step("magic-ip-webhook with a generated certificate, registered as a MutatingWebhookConfiguration")
	harness.StartWebhook(t, cp, webhookBin)
	done()
	done = step("one magic-ip-agent per node, inside the node's namespace")
	agents := map[string]*harness.Process{}
	for _, n := range c.Nodes {
		agents[n.Name] = harness.StartAgent(t, c, n, agentBin, "-v", "0")
	}
	for _, n := range c.Nodes {
		if err := waitReady(n, 20*time.Second); err != nil {
			return err
		}
	}
	done()

	ctx := t.Context()
	done = step("namespace demo (magic-ip.dev/inject=enabled), MagicIP apm-server %s:%d -> %d/TCP, producers on node 1 and 2", magicAddr, magicPort, targetPort)
	if err := c.EnsureNamespace(ctx, "demo", map[string]string{"magic-ip.dev/inject": "enabled"}); err != nil {
		return err
	}
	if err := cp.Client.Create(ctx, apmServer()); err != nil {
		return err
	}
	producers := map[string]*harness.Pod{}
	for _, n := range c.Nodes[:2] {
		p := addProducer(t, c, n, fmt.Sprintf("apm-server-%d", n.Index))
		producers[p.Name] = p
	}
	done()
	done = step("consumer pods on every node, created through the API (the webhook injects them)")
	var consumers []*harness.Pod
	for _, n := range c.Nodes {
		consumers = append(consumers, c.AddPod(n, "demo", fmt.Sprintf("consumer-%d", n.Index), map[string]string{"app": "consumer"}, harness.PodOptions{}))
	}
	done()

	nodeOf := map[string]string{}
	for name, p := range producers {
		nodeOf[name] = p.Node.Name
	}
	// The agents react within milliseconds; allow them up to 5 s before the one measured dial.
	addr := net.JoinHostPort(magicAddr, fmt.Sprint(magicPort))
	for i, cons := range consumers {
		want := map[bool]string{true: fmt.Sprintf("apm-server-%d", i+1), false: "refused"}[i < 2]
		for start := time.Now(); time.Since(start) < 5*time.Second; {
			if got, _, outcome := dial(ctx, cons.Netns, addr); got == want || outcome == want {
				break
			}
		}
	}
	fmt.Println()
	rows, err := table(ctx, consumers, nodeOf)
	if err != nil {
		return err
	}
	var problems []error
	for i, r := range rows {
		want := fmt.Sprintf("apm-server-%d", i+1)
		switch {
		case i < 2 && r.answeredBy != want:
			problems = append(problems, fmt.Errorf("%s: answered by %q, want %s on its own node", r.consumer, r.answeredBy, want))
		case i == 2 && (r.outcome != "refused" || r.took > 100*time.Millisecond):
			problems = append(problems, fmt.Errorf("%s: %s after %s, want a fast refusal (no producer on node 3)", r.consumer, r.outcome, r.took))
		case r.env["APM_SERVER_MAGIC_HOST"] != magicAddr:
			problems = append(problems, fmt.Errorf("%s: APM_SERVER_MAGIC_HOST=%q, want %s", r.consumer, r.env["APM_SERVER_MAGIC_HOST"], magicAddr))
		}
	}
	if err := failover(t, c, consumers[0], producers["apm-server-1"]); err != nil {
		problems = append(problems, err)
	}
	if err := restartUnderLoad(t, c, agentBin, agents[consumers[1].Node.Name], consumers[1]); err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	fmt.Println("\nall checks passed.")
	if keep {
		return stayUp(t, cp, readyFile)
	}
	return nil
}

func prerequisites() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root: the demo creates network namespaces and iptables rules (run: sudo make demo)")
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		missing = append(missing, "ip netns: apt-get install iproute2")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		missing = append(missing, "iptables: apt-get install iptables")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing prerequisites:\n  - %s", strings.Join(missing, "\n  - "))
	}
	return nil
}

func apmServer() *v1alpha1.MagicIP {
	return &v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: "apm-server"},
		Spec: v1alpha1.MagicIPSpec{
			Address:  magicAddr,
			Ports:    []v1alpha1.MagicIPPort{{Name: "http", Port: magicPort, TargetPort: targetPort}},
			Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm-server"}}},
			Inject:   v1alpha1.Inject{ExtraEnv: []v1alpha1.EnvTemplate{{Name: "ELASTIC_APM_SERVER_URL", Value: "http://{address}:{port}"}}},
		},
	}
}

func addProducer(t *demoT, c *harness.Cluster, n *harness.Node, name string, opts ...harness.PodOptions) *harness.Pod {
	var o harness.PodOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	p := c.AddPod(n, "apm", name, map[string]string{"app": "apm-server"}, o)
	p.Netns.ServeTCP(t, targetPort, p.Name)
	return p
}

type result struct {
	node, consumer, outcome, answeredBy string
	env                                 map[string]string
	took                                time.Duration
}

// table connects from each consumer to the address and port the API server stored in its env.
func table(ctx context.Context, consumers []*harness.Pod, nodeOf map[string]string) ([]result, error) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tCONSUMER\tINJECTED (read back from the API)\tCONNECT $APM_SERVER_MAGIC_HOST:$APM_SERVER_MAGIC_PORT\tANSWERED BY")
	var rows []result
	for _, cons := range consumers {
		obj, err := cons.Object(ctx)
		if err != nil {
			return nil, err
		}
		r := result{node: cons.Node.Name, consumer: cons.Name, env: map[string]string{}}
		for _, e := range obj.Spec.Containers[0].Env {
			r.env[e.Name] = e.Value
		}
		addr := net.JoinHostPort(r.env["APM_SERVER_MAGIC_HOST"], r.env["APM_SERVER_MAGIC_PORT"])
		var got string
		got, r.took, r.outcome = dial(ctx, cons.Netns, addr)
		answered := "-"
		if r.outcome == "answered" {
			r.answeredBy = got
			answered = fmt.Sprintf("%s (on %s)", got, nodeOf[got])
		}
		fmt.Fprintf(w, "%s\t%s\tAPM_SERVER_MAGIC_HOST=%s APM_SERVER_MAGIC_PORT=%s\t%s in %s\t%s\n", r.node, r.consumer,
			r.env["APM_SERVER_MAGIC_HOST"], r.env["APM_SERVER_MAGIC_PORT"], r.outcome, r.took.Round(10*time.Microsecond), answered)
		rows = append(rows, r)
	}
	fmt.Fprintln(w, "\t\t(also: ELASTIC_APM_SERVER_URL=http://"+magicAddr+":9200)\t\t")
	return rows, w.Flush()
}

func dial(ctx context.Context, ns *harness.Netns, addr string) (string, time.Duration, string) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	got, err := ns.DialTCP(ctx, addr)
	return got, time.Since(start), harness.Outcome(err)
}

// failover: node 1's producer goes NotReady while a second one becomes Ready there.
func failover(t *demoT, c *harness.Cluster, consumer *harness.Pod, old *harness.Pod) error {
	ctx := t.Context()
	fmt.Printf("\n==> failover on %s: %s NotReady, apm-server-1b Ready\n", old.Node.Name, old.Name)
	nb := addProducer(t, c, old.Node, "apm-server-1b", harness.PodOptions{NotReady: true})
	addr := net.JoinHostPort(magicAddr, fmt.Sprint(magicPort))
	begin := time.Now()
	if err := errors.Join(old.SetReady(ctx, false), nb.SetReady(ctx, true)); err != nil {
		return err
	}
	start := time.Now() // both status updates are written: the clock starts
	writes := start.Sub(begin)
	for {
		got, _, _ := dial(ctx, consumer.Netns, addr)
		if got == nb.Name {
			break
		}
		if time.Since(start) > 5*time.Second {
			return fmt.Errorf("failover: %s not answered by %s within 5 s (last: %q)", consumer.Name, nb.Name, got)
		}
	}
	switchTime := time.Since(start)
	for range 20 {
		if got, _, outcome := dial(ctx, consumer.Netns, addr); got != nb.Name {
			return fmt.Errorf("failover: after the switch %s got %q (%s)", consumer.Name, got, outcome)
		}
	}
	fmt.Printf("    %s is now answered by %s: %s after the status was written (the API writes took %s); 20 more connections, all to %s\n",
		consumer.Name, nb.Name, switchTime.Round(100*time.Microsecond), writes.Round(100*time.Microsecond), nb.Name)
	return nil
}

// restartUnderLoad restarts node 2's agent while its consumer connects every 5 ms.
func restartUnderLoad(t *demoT, c *harness.Cluster, agentBin string, agent *harness.Process, consumer *harness.Pod) error {
	ctx := t.Context()
	n := consumer.Node
	fmt.Printf("\n==> restarting the agent of %s while %s connects every 5 ms\n", n.Name, consumer.Name)
	addr := net.JoinHostPort(magicAddr, fmt.Sprint(magicPort))
	stop := make(chan struct{})
	type tally struct{ ok, failed int }
	res := make(chan tally)
	go func() {
		var tl tally
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				res <- tl
				return
			case <-tick.C:
			}
			if _, _, outcome := dial(ctx, consumer.Netns, addr); outcome == "answered" {
				tl.ok++
			} else {
				tl.failed++
			}
		}
	}()
	if err := agent.Stop(); err != nil {
		fmt.Printf("    old agent exited: %v\n", err)
	}
	harness.StartAgent(t, c, n, agentBin, "-v", "0")
	if err := waitReady(n, 10*time.Second); err != nil {
		close(stop)
		<-res
		return fmt.Errorf("restart: %w", err)
	}
	for range 100 { // keep probing a little after the new agent's first sync
		if _, _, outcome := dial(ctx, consumer.Netns, addr); outcome != "answered" {
			break
		}
	}
	close(stop)
	tl := <-res
	fmt.Printf("    %d connections during the restart, %d failed\n", tl.ok+tl.failed, tl.failed)
	if tl.failed > 0 {
		return fmt.Errorf("restart: %d connections failed", tl.failed)
	}
	return nil
}

// waitReady waits until the agent in n answers /readyz.
func waitReady(n *harness.Node, timeout time.Duration) error {
	if err := harness.WaitAgentReady(context.Background(), n.Netns, timeout); err != nil {
		return fmt.Errorf("agent on %s not ready within %s: %w", n.Name, timeout, err)
	}
	return nil
}

// stayUp prints how to use the cluster and waits for SIGTERM/Ctrl-C.
func stayUp(t *demoT, cp *harness.ControlPlane, readyFile string) error {
	kc := filepath.Join(os.TempDir(), "magic-ip-demo.kubeconfig")
	b, err := os.ReadFile(cp.Kubeconfig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(kc, b, 0o600); err != nil {
		return err
	}
	t.Cleanup(func() { os.Remove(kc) })
	kubectl := filepath.Join(cp.AssetsDir, "kubectl")
	fmt.Printf("\nthe demo cluster stays up (make demo-down, or Ctrl-C, ends it):\n"+
		"  export KUBECONFIG=%s\n  %s get mip\n  %s get pods -A -o wide\n  %s get pod -n demo consumer-1 -o jsonpath='{.spec.containers[0].env}'\n"+
		"  ip netns list | grep demo     # nodes and pods; e.g. ip netns exec <node> iptables-save | grep MAGIC-IP\n",
		kc, kubectl, kubectl, kubectl)
	if readyFile != "" {
		if err := os.WriteFile(readyFile, []byte(kc+"\n"), 0o644); err != nil {
			return err
		}
	}
	<-t.Context().Done()
	fmt.Println("\nstopping: cleaning up")
	return nil
}
