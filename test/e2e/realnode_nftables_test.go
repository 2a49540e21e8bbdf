package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// chartMetricsAddr is where the chart's agent serves /metrics by default (agent.metrics.bindAddress).
const chartMetricsAddr = "127.0.0.1:10271"

// TestRealNodesNftables installs the chart with its defaults (agent.datapath auto) on two real
// nodes whose kube-proxy runs in nftables mode: every agent picks nftables and says why (its
// MagicIPNode and magic_ip_agent_datapath_info), only our nftables table holds our rules, the
// consumer is answered by its node's producer through the magic address, and a ClusterIP (kube-proxy's
// nftables rules) answers from every node. Then `helm upgrade --set agent.datapath=iptables`, and
// back to nftables, each under the consumer's load (a connection every 2 ms): not one failed
// connection, the other backend's rules gone from every node afterwards, the ClusterIP still
// answering.
func TestRealNodesNftables(t *testing.T) {
	rc := harness.NewRealClusterWith(t, harness.RealClusterOptions{Nodes: 2, KubeProxyMode: harness.KubeProxyNftables})
	harness.StartCertManager(t, rc.CP)
	if err := rc.InstallChart(realRelease); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, rc)
	local := startWorkload(t, rc)[0]
	clusterIP := producerService(t, rc.CP)

	t.Run("auto picks nftables beside kube-proxy in nftables mode", func(t *testing.T) {
		wantNodesDatapath(t, rc, agent.DatapathNftables, agent.ReasonKubeProxyNftables)
		wantLocalAnswers(t, rc, local)
		wantClusterIP(t, rc, clusterIP)
	})
	for _, to := range []string{agent.DatapathIptables, agent.DatapathNftables} {
		t.Run("helm upgrade to "+to+" under load", func(t *testing.T) {
			if err := local.Reset(t.Context()); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := rc.UpgradeChart(realRelease, "agent.datapath="+to); err != nil {
				t.Fatal(err)
			}
			eventually(t, 2*time.Minute, "agent DaemonSet rolled out", func(ctx context.Context) error {
				return harness.DaemonSetRolledOut(ctx, rc.CP.Client, realNS, realRelease+"-agent")
			})
			took := time.Since(start)
			wantNodesDatapath(t, rc, to, agent.ReasonFlag)
			s, err := local.Stats(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("switch to %s: helm upgrade + rollout %s; consumer on %s: %d attempts, %d answered, %d refused, %d timeouts, %d errors",
				to, took.Round(time.Millisecond), local.Node.Name, s.Attempts, s.OK, s.Refused, s.Timeouts, s.Errors)
			if s.Failed() != 0 || s.OK == 0 {
				t.Errorf("during the switch to %s: ok %d, refused %d, timeouts %d, errors %d, last error %q; want no failure",
					to, s.OK, s.Refused, s.Timeouts, s.Errors, s.LastError)
			}
			wantClusterIP(t, rc, clusterIP)
		})
	}
}

// wantNodesDatapath waits until every node's agent reports datapath (its MagicIPNode, and
// magic_ip_agent_datapath_info with reason), and the node holds our rules in that backend only.
func wantNodesDatapath(t *testing.T, rc *harness.RealCluster, datapath, reason string) {
	t.Helper()
	info := fmt.Sprintf(`magic_ip_agent_datapath_info{datapath=%q,reason=%q}`, datapath, reason)
	for _, n := range rc.Nodes {
		eventually(t, time.Minute, n.Name+" programmed with "+datapath+" only", func(ctx context.Context) error {
			var rec v1alpha1.MagicIPNode
			if err := rc.CP.Client.Get(ctx, client.ObjectKey{Name: n.Name}, &rec); err != nil {
				return err
			}
			if rec.Datapath != datapath {
				return fmt.Errorf("MagicIPNode %s: datapath %q", n.Name, rec.Datapath)
			}
			if v, err := metricAt(ctx, n, chartMetricsAddr, info); err != nil || v != 1 {
				return fmt.Errorf("%s = %v (%v), want 1", info, v, err)
			}
			rules, _, err := magicState(ctx, n)
			if err != nil {
				return err
			}
			_, table := nftComments(t, n.Netns)
			if (len(rules) > 0) != (datapath == agent.DatapathIptables) || table != (datapath == agent.DatapathNftables) {
				return fmt.Errorf("iptables rules of ours %q, table inet magic-ip present %t", rules, table)
			}
			return nil
		})
	}
}

// producerService creates a ClusterIP Service in front of the producers (port 8126) and returns
// its address.
func producerService(t *testing.T, cp *harness.ControlPlane) string {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "datadog", Name: "producer"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "producer"},
		Ports:    []corev1.ServicePort{{Name: "apm", Port: 8126, TargetPort: intstr.FromInt32(8126), Protocol: corev1.ProtocolTCP}}}}
	if err := cp.Client.Create(t.Context(), svc); err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// wantClusterIP waits until the ClusterIP answers from a producer on every node (kube-proxy's
// rules, which ours must leave alone).
func wantClusterIP(t *testing.T, rc *harness.RealCluster, ip string) {
	t.Helper()
	for _, n := range rc.Nodes {
		eventually(t, time.Minute, "ClusterIP "+ip+" answers on "+n.Name, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			got, err := n.Netns.DialTCP(ctx, net.JoinHostPort(ip, strconv.Itoa(8126)))
			if err != nil {
				return err
			}
			if !strings.HasPrefix(got, "producer-") {
				return fmt.Errorf("answer %q, want one from a producer", got)
			}
			return nil
		})
	}
}
