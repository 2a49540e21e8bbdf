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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

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
// registers a MutatingWebhookConfiguration like the one the manifests ship (opt-in namespace
// label, opt-out pod label, failurePolicy Ignore, 2 s timeout) and waits until it is ready.
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
	if w.Port, err = freePort(); err != nil {
		t.Fatal(err)
	}
	if w.HealthPort, err = freePort(); err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"--kubeconfig", cp.Kubeconfig, "--cert-dir", w.CertDir, "--port", strconv.Itoa(w.Port),
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", w.HealthPort), "--metrics-bind-address", "0",
		"--leader-elect=false",
	}, extraArgs...)
	w.Process = StartHostProcess(t, "webhook", bin, args...)
	if err := w.WaitReady(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	cfg := WebhookConfiguration(w.ConfigName, fmt.Sprintf("https://127.0.0.1:%d/mutate-v1-pod", w.Port), ca.CertPEM)
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
	pool := x509.NewCertPool()
	pool.AddCert(w.CA.Cert)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", w.Port), &tls.Config{RootCAs: pool})
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

// WebhookConfiguration is the MutatingWebhookConfiguration magic-ip ships, pointed at url.
func WebhookConfiguration(name, url string, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	ifNeeded := admissionregistrationv1.IfNeededReinvocationPolicy
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "pods.magic-ip.dev",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: ptr.To(admissionregistrationv1.NamespacedScope)}}},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			TimeoutSeconds:          ptr.To[int32](2),
			ReinvocationPolicy:      &ifNeeded,
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"magic-ip.dev/inject": "enabled"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{WebhookNamespace, "kube-system"},
				}},
			},
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "magic-ip.dev/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"disabled"},
			}}},
		}},
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
