package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/magic-ip/magic-ip/certs"
)

// Webhook is a running magic-ip-webhook process registered with the API server by URL.
type Webhook struct {
	Process *Process
	// Port serves /mutate-v1-pod over HTTPS on 127.0.0.1; HealthPort serves /readyz.
	Port, HealthPort int
	// CertDir holds tls.crt/tls.key (replace them to rotate) and the CA that signed them.
	CertDir string
	CA      *certs.CA
	// ConfigName is the MutatingWebhookConfiguration's name.
	ConfigName string
}

// WebhookNamespace is the namespace the webhook "runs in": never mutated.
const WebhookNamespace = "magic-ip-system"

// StartWebhook generates a CA and a serving certificate for 127.0.0.1, starts bin serving them,
// registers the MutatingWebhookConfiguration the manifests ship (pointed at it) and waits until
// it is ready. The process authenticates as the webhook's service account (shipped RBAC).
func StartWebhook(t T, cp *ControlPlane, bin string, extraArgs ...string) *Webhook {
	t.Helper()
	ca, err := certs.NewCA("magic-ip-test-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w := &Webhook{CertDir: t.TempDir(), CA: ca, ConfigName: "magic-ip-" + shortName("t", t.Name())}
	if err := w.RotateCert(); err != nil {
		t.Fatal(err)
	}
	if w.Port, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	if w.HealthPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"--kubeconfig", cp.WebhookKubeconfig, "--cert-dir", w.CertDir, "--port", strconv.Itoa(w.Port),
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", w.HealthPort), "--metrics-bind-address", "0",
		"--leader-elect=false",
	}, extraArgs...)
	w.Process = StartHostProcess(t, "webhook", bin, args...)
	w.Process.FailOnForbidden(t)
	if err := w.WaitReady(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	cfg, err := cp.WebhookConfiguration(w.ConfigName, fmt.Sprintf("https://127.0.0.1:%d/mutate-v1-pod", w.Port), ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Create(t.Context(), cfg); err != nil {
		t.Fatalf("register webhook: %v", err)
	}
	t.Cleanup(func() { _ = cp.Client.Delete(t.Context(), cfg) })
	return w
}

// RotateCert issues a new serving certificate from the same CA into CertDir.
func (w *Webhook) RotateCert() error {
	_, err := certs.Generate(w.CertDir, certs.Options{Service: "magic-ip-webhook", Namespace: WebhookNamespace, Hosts: []string{"127.0.0.1"}, CA: w.CA})
	return err
}

// ServedCert performs a TLS handshake with the webhook and returns the certificate it presents.
func (w *Webhook) ServedCert() (*x509.Certificate, error) {
	return ServedCert(w.Port, w.CA.Pool())
}

// ServedCert performs a TLS handshake with 127.0.0.1:port as the API server does (verifying the
// chain to roots and the name 127.0.0.1) and returns the certificate presented.
func ServedCert(port int, roots *x509.CertPool) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// WaitReady polls /readyz until it answers 200.
func (w *Webhook) WaitReady(t T, timeout time.Duration) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", w.HealthPort)
	return wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		if w.Process.Exited() {
			return false, fmt.Errorf("webhook exited:\n%s", tail(w.Process.Output(), 30))
		}
		resp, err := http.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// WebhookConfiguration is the MutatingWebhookConfiguration magic-ip ships (manifests/webhook),
// renamed and pointed at url with caBundle instead of the in-cluster Service: everything else
// (selectors, failure policy, timeout, reinvocation) is exactly what users install.
func (cp *ControlPlane) WebhookConfiguration(name, url string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	cfg, err := cp.ShippedWebhookConfiguration()
	if err != nil {
		return nil, err
	}
	cfg.Name = name
	for i := range cfg.Webhooks {
		cfg.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle}
	}
	return cfg, nil
}

// ShippedWebhookConfiguration is the one MutatingWebhookConfiguration manifests/webhook renders, typed.
func (cp *ControlPlane) ShippedWebhookConfiguration() (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	objs, err := cp.Kustomize("webhook")
	if err != nil {
		return nil, err
	}
	var found []*admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		if o.GetKind() != "MutatingWebhookConfiguration" {
			continue
		}
		cfg := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, cfg, true); err != nil {
			return nil, fmt.Errorf("shipped MutatingWebhookConfiguration: %w", err)
		}
		found = append(found, cfg)
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("manifests/webhook renders %d MutatingWebhookConfigurations, want 1", len(found))
	}
	return found[0], nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
