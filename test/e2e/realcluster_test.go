package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestRealControlPlaneReachesCluster checks the two paths a cluster of real nodes needs between
// the API server (root namespace) and the cluster network (its own namespaces, no route from the
// root namespace): pods reach the API server at its advertise address through the cluster's API
// gateway with the cluster CA that kube-root-ca.crt publishes, and the API server reaches a pod
// behind a Service through its egress proxy (the path webhook calls take).
func TestRealControlPlaneReachesCluster(t *testing.T) {
	cp := harness.StartRealControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1})
	ctx := t.Context()
	n := c.Nodes[0]

	caPEM, err := os.ReadFile(cp.Real.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "kube-root-ca.crt published with the cluster CA", func(ctx context.Context) error {
		var cm corev1.ConfigMap
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "kube-root-ca.crt"}, &cm); err != nil {
			return err
		}
		if cm.Data["ca.crt"] != string(caPEM) {
			return fmt.Errorf("ca.crt is not the cluster CA")
		}
		return nil
	})
	var eps corev1.Endpoints
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "kubernetes"}, &eps); err != nil {
		t.Fatal(err)
	}
	port, err := cp.APIPort()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps.Subsets) != 1 || len(eps.Subsets[0].Addresses) != 1 || eps.Subsets[0].Addresses[0].IP != harness.APIGatewayIP ||
		eps.Subsets[0].Ports[0].Port != int32(port) {
		t.Fatalf("kubernetes Endpoints = %+v, want %s:%d", eps.Subsets, harness.APIGatewayIP, port)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	pod := c.AddPod(n, "reach", "client", nil, harness.PodOptions{})
	hc := pod.Netns.HTTPClient(5 * time.Second)
	hc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots, ServerName: "kubernetes.default.svc", MinVersion: tls.VersionTLS12}
	resp, err := hc.Get("https://" + net.JoinHostPort(harness.APIGatewayIP, strconv.Itoa(port)) + "/version")
	if err != nil {
		t.Fatalf("pod to API server through the gateway: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /version from a pod: %s", resp.Status)
	}

	server := c.AddPod(n, "reach", "server", map[string]string{"app": "hello"}, harness.PodOptions{})
	serveHello(t, server)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "reach", Name: "hello"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "hello"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := cp.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "API server reaches the pod behind its Service", func(ctx context.Context) error {
		b, err := cs.CoreV1().Services("reach").ProxyGet("http", "hello", "80", "/", nil).DoRaw(ctx)
		if err != nil {
			return err
		}
		if want := "hello from " + server.IP.String(); string(b) != want {
			return fmt.Errorf("answer %q, want %q", b, want)
		}
		return nil
	})
}

// serveHello answers HTTP on the pod's address, port 8080, with "hello from <pod IP>".
func serveHello(t *testing.T, p *harness.Pod) {
	t.Helper()
	var ln net.Listener
	if err := p.Netns.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(p.IP.String(), "8080"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello from "+p.IP.String())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}
