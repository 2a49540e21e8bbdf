package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

const (
	cmNamespace   = harness.WebhookNamespace // magic-ip-system
	cmServingCert = "magic-ip-webhook"       // the shipped serving Certificate
	cmServingTLS  = "magic-ip-webhook-tls"   // its Secret, mounted by the webhook Deployment
	cmCASecret    = "magic-ip-ca"            // the CA Certificate's Secret
)

// TestCertManagerIssuesWebhookTLS: the real cert-manager (controller + cainjector) issues the
// webhook's serving certificate from the shipped manifests/certmanager, cainjector fills the
// shipped MutatingWebhookConfiguration's caBundle, the API server calls the real webhook over that
// TLS, and a renewal (as `cmctl renew` triggers it) is served by the same webhook process.
func TestCertManagerIssuesWebhookTLS(t *testing.T) {
	cp := harness.StartControlPlane(t)
	// After the control plane: cleanups run last-in first-out, so cert-manager stops first.
	cm := harness.StartCertManager(t, cp)
	ctx := t.Context()
	// magic-ip-system comes with the control plane (with the shipped RBAC).
	for name, labels := range map[string]map[string]string{"apps": {"magic-ip.dev/inject": "enabled"}, "datadog": nil} {
		if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
			t.Fatal(err)
		}
	}

	// 1. The shipped Issuers and Certificates.
	objs := cmRender(t, cp, "certmanager")
	serving := cmFind(t, objs, "Certificate", cmServingCert)
	// Test-only change: the API server reaches this webhook at https://127.0.0.1:<port>, not
	// through the Service the certificate names (magic-ip-webhook.magic-ip-system.svc), so the
	// serving certificate also gets the IP address 127.0.0.1. Everything else is as shipped.
	if err := unstructured.SetNestedStringSlice(serving.Object, []string{"127.0.0.1"}, "spec", "ipAddresses"); err != nil {
		t.Fatal(err)
	}
	applied := time.Now()
	if err := cp.Apply(ctx, objs, false); err != nil {
		t.Fatalf("apply manifests/certmanager: %v", err)
	}
	var issued *corev1.Secret
	cmEventually(t, cm, 60*time.Second, "Secret "+cmServingTLS+" issued", func(ctx context.Context) error {
		s := &corev1.Secret{}
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: cmNamespace, Name: cmServingTLS}, s); err != nil {
			return err
		}
		if len(s.Data["tls.crt"]) == 0 || len(s.Data["tls.key"]) == 0 || len(s.Data["ca.crt"]) == 0 {
			return fmt.Errorf("secret keys %v", slices.Sorted(maps.Keys(s.Data)))
		}
		issued = s
		return nil
	})
	issueTime := time.Since(applied)
	cmEventually(t, cm, 30*time.Second, "Certificate "+cmServingCert+" Ready", func(ctx context.Context) error {
		return cmCertReady(ctx, cp, cmServingCert, 1)
	})
	first := cmLeaf(t, issued.Data["tls.crt"])
	caSecret := &corev1.Secret{}
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: cmNamespace, Name: cmCASecret}, caSecret); err != nil {
		t.Fatal(err)
	}
	caPEM := caSecret.Data["ca.crt"]
	pool := x509.NewCertPool()
	if len(caPEM) == 0 || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA secret %s has no usable ca.crt", cmCASecret)
	}
	if !bytes.Equal(issued.Data["ca.crt"], caPEM) {
		t.Errorf("serving Secret's ca.crt is not the CA Secret's")
	}
	if _, err := first.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("serving certificate does not chain to the CA for server auth: %v", err)
	}
	wantDNS := []string{"magic-ip-webhook.magic-ip-system.svc", "magic-ip-webhook.magic-ip-system.svc.cluster.local"}
	if !slices.Equal(first.DNSNames, wantDNS) || len(first.IPAddresses) != 1 || !first.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("serving certificate names DNS %v IPs %v, want %v and 127.0.0.1", first.DNSNames, first.IPAddresses, wantDNS)
	}
	t.Logf("measured: manifests applied -> Secret %s issued (self-signed CA, CA issuer, serving cert): %s", cmServingTLS, issueTime.Round(time.Millisecond))

	// 2. The Secret projected into a directory as the kubelet does, kept in sync, and the real
	// webhook serving from it.
	vol := cmStartSecretVolume(t, cp, cmNamespace, cmServingTLS)
	cmEventually(t, cm, 10*time.Second, "Secret written to the volume", func(context.Context) error {
		return vol.has(first.SerialNumber)
	})
	if target, err := os.Readlink(filepath.Join(vol.dir, "tls.crt")); err != nil || target != filepath.Join("..data", "tls.crt") {
		t.Fatalf("tls.crt is not the kubelet's ..data symlink: %q %v", target, err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	healthPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	// As its service account, under the shipped RBAC, as the Deployment runs it.
	wh := harness.StartHostProcess(t, "webhook", webhookBin,
		"--kubeconfig", cp.WebhookKubeconfig, "--cert-dir", vol.dir, "--port", strconv.Itoa(port),
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", healthPort), "--metrics-bind-address", "0",
		"--leader-elect=false")
	wh.FailOnForbidden(t)
	pid := wh.Pid()
	if err := (&harness.Webhook{Process: wh, HealthPort: healthPort}).WaitReady(t, 30*time.Second); err != nil {
		t.Fatalf("webhook ready: %v", err)
	}
	if served, err := harness.ServedCert(port, pool); err != nil || served.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("webhook serves %v (err %v), want the issued serial %s", cmSerial(served), err, first.SerialNumber)
	}

	// 3. The shipped MutatingWebhookConfiguration, reaching the webhook by URL; cainjector fills
	// its caBundle from the Certificate named in cert-manager.io/inject-ca-from.
	mwc, err := cp.ShippedWebhookConfiguration()
	if err != nil {
		t.Fatal(err)
	}
	if mwc.Annotations["cert-manager.io/inject-ca-from"] != cmNamespace+"/"+cmServingCert {
		t.Fatalf("shipped webhook configuration lost its inject-ca-from annotation: %v", mwc.Annotations)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate-v1-pod", port)
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig.Service = nil
		mwc.Webhooks[i].ClientConfig.URL = &url
		if len(mwc.Webhooks[i].ClientConfig.CABundle) != 0 {
			t.Fatalf("shipped webhook %s has a caBundle; cainjector is to fill it", mwc.Webhooks[i].Name)
		}
	}
	registered := time.Now()
	if err := cp.Client.Create(ctx, mwc); err != nil {
		t.Fatalf("register webhook configuration: %v", err)
	}
	cmEventually(t, cm, 30*time.Second, "cainjector fills caBundle with the CA", func(ctx context.Context) error {
		got := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(mwc), got); err != nil {
			return err
		}
		for _, w := range got.Webhooks {
			if !bytes.Equal(w.ClientConfig.CABundle, caPEM) {
				return fmt.Errorf("webhook %s caBundle %q, want the CA Secret's ca.crt", w.Name, w.ClientConfig.CABundle)
			}
		}
		return nil
	})
	t.Logf("measured: webhook configuration created -> caBundle injected: %s", time.Since(registered).Round(time.Millisecond))

	// 4. Pods created through the API server are mutated.
	if err := cp.Client.Create(ctx, datadogMagicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	cmEventually(t, cm, 10*time.Second, "MagicIP datadog Accepted", func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: "datadog"}, m); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionAccepted) || m.Status.ObservedGeneration != m.Generation {
			return fmt.Errorf("status %+v", m.Status)
		}
		return nil
	})
	// The API server picks the new configuration (and its caBundle) up asynchronously, and
	// failurePolicy Ignore hides a webhook it cannot call: dry-run creates until one is mutated.
	cmEventually(t, cm, 15*time.Second, "API server calls the webhook over the cert-manager TLS", func(ctx context.Context) error {
		p := testPod("apps", "probe")
		return cmMutated(p, cp.Client.Create(ctx, p, client.DryRunAll))
	})
	cmCreateMutated(t, cp, "before-renewal")

	// 5. Renewal, as `cmctl renew` triggers it: Issuing=True, reason ManuallyTriggered, through
	// the status subresource.
	renewed := time.Now()
	cmTriggerRenewal(t, cp, cmServingCert)
	var second *x509.Certificate
	cmEventually(t, cm, 60*time.Second, "renewed Secret", func(ctx context.Context) error {
		s := &corev1.Secret{}
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: cmNamespace, Name: cmServingTLS}, s); err != nil {
			return err
		}
		c, err := cmParseLeaf(s.Data["tls.crt"])
		if err != nil {
			return err
		}
		if c.SerialNumber.Cmp(first.SerialNumber) == 0 {
			return fmt.Errorf("still serial %s", first.SerialNumber)
		}
		second = c
		return nil
	})
	secretTime := time.Since(renewed)
	cmEventually(t, cm, 30*time.Second, "webhook serves the renewed certificate", func(context.Context) error {
		if err := vol.Err(); err != nil {
			return err
		}
		c, err := harness.ServedCert(port, pool)
		if err != nil {
			return err
		}
		if c.SerialNumber.Cmp(second.SerialNumber) != 0 {
			return fmt.Errorf("serves serial %s, want %s", c.SerialNumber, second.SerialNumber)
		}
		return nil
	})
	servedTime := time.Since(renewed)
	t.Logf("measured: renewal triggered -> new Secret: %s; -> written to the volume: %s; -> served by the webhook: %s",
		secretTime.Round(time.Millisecond), vol.writtenAt(second.SerialNumber).Sub(renewed).Round(time.Millisecond), servedTime.Round(time.Millisecond))
	if bytes.Equal(first.RawSubjectPublicKeyInfo, second.RawSubjectPublicKeyInfo) {
		t.Errorf("renewed certificate kept the private key (rotationPolicy Always)")
	}
	cmEventually(t, cm, 30*time.Second, "Certificate Ready at revision 2", func(ctx context.Context) error {
		return cmCertReady(ctx, cp, cmServingCert, 2)
	})
	if wh.Exited() || wh.Pid() != pid {
		t.Fatalf("webhook restarted or exited:\n%s", wh.Output())
	}
	cmCreateMutated(t, cp, "after-renewal")
	if err := vol.Err(); err != nil {
		t.Error(err)
	}
}

// cmEventually is eventually that also fails fast when a cert-manager process died.
func cmEventually(t *testing.T, cm *harness.CertManager, timeout time.Duration, what string, cond func(ctx context.Context) error) {
	t.Helper()
	eventually(t, timeout, what, func(ctx context.Context) error {
		if err := cm.Err(); err != nil {
			t.Fatal(err)
		}
		return cond(ctx)
	})
}

// cmRender renders manifests/<dir> with the control plane's kubectl (kubectl kustomize).
func cmRender(t *testing.T, cp *harness.ControlPlane, dir string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := cp.Kustomize(dir)
	if err != nil {
		t.Fatalf("render manifests/%s: %v", dir, err)
	}
	if len(objs) == 0 {
		t.Fatalf("manifests/%s renders no objects", dir)
	}
	return objs
}

func cmFind(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the rendered manifests", kind, name)
	return nil
}

// cmCertReady: the Certificate is Ready for its generation, at the given revision.
func cmCertReady(ctx context.Context, cp *harness.ControlPlane, name string, revision int64) error {
	u := cmCertificate()
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: cmNamespace, Name: name}, u); err != nil {
		return err
	}
	rev, _, _ := unstructured.NestedInt64(u.Object, "status", "revision")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Ready" && m["status"] == "True" && m["observedGeneration"] == u.GetGeneration() && rev == revision {
			return nil
		}
	}
	return fmt.Errorf("revision %d, conditions %v", rev, conds)
}

func cmCertificate() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("cert-manager.io/v1")
	u.SetKind("Certificate")
	return u
}

// cmTriggerRenewal does what `cmctl renew` does: set the Issuing condition to True with reason
// ManuallyTriggered through the status subresource; cert-manager then re-issues.
func cmTriggerRenewal(t *testing.T, cp *harness.ControlPlane, name string) {
	t.Helper()
	u := cmCertificate()
	if err := cp.Client.Get(t.Context(), client.ObjectKey{Namespace: cmNamespace, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	conds = slices.DeleteFunc(conds, func(c any) bool {
		m, _ := c.(map[string]any)
		return m["type"] == "Issuing"
	})
	conds = append(conds, map[string]any{
		"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
		"message": "Certificate re-issuance manually triggered", "observedGeneration": u.GetGeneration(),
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
	})
	if err := unstructured.SetNestedSlice(u.Object, conds, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Status().Update(t.Context(), u); err != nil {
		t.Fatalf("trigger renewal of %s: %v", name, err)
	}
}

// cmCreateMutated creates a pod in the opted-in namespace and checks the webhook injected it.
func cmCreateMutated(t *testing.T, cp *harness.ControlPlane, name string) {
	t.Helper()
	p := testPod("apps", name)
	if err := cmMutated(p, cp.Client.Create(t.Context(), p)); err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
}

func cmMutated(p *corev1.Pod, createErr error) error {
	if createErr != nil {
		return createErr
	}
	if got := p.Annotations["magic-ip.dev/injected"]; got != "datadog" {
		return fmt.Errorf("not mutated: injected annotation %q", got)
	}
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if env := envOf(c); env["DATADOG_MAGIC_HOST"] != magicAddr || env["DATADOG_MAGIC_PORT_APM"] != "8126" {
			return fmt.Errorf("container %s env %v, want DATADOG_MAGIC_HOST=%s", c.Name, env, magicAddr)
		}
	}
	return nil
}

func cmParseLeaf(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func cmLeaf(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, err := cmParseLeaf(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func cmSerial(c *x509.Certificate) any {
	if c == nil {
		return nil
	}
	return c.SerialNumber
}

// cmSecretVolume mirrors a Secret into a directory the way the kubelet projects a Secret volume
// (its AtomicWriter): each version's files live in a new timestamped directory, the "..data"
// symlink is swapped to it atomically (rename of a fresh symlink), every key is a symlink
// "key -> ..data/key", and the previous version's directory is then removed. A watch on the
// Secret keeps it in sync while the test runs.
type cmSecretVolume struct {
	dir     string
	mu      sync.Mutex
	err     error
	written map[string]time.Time // serial -> when its files were swapped in
	last    []byte               // tls.crt written last
}

func cmStartSecretVolume(t *testing.T, cp *harness.ControlPlane, namespace, name string) *cmSecretVolume {
	t.Helper()
	v := &cmSecretVolume{dir: t.TempDir(), written: map[string]time.Time{}}
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name }))
	onSecret := func(obj any) {
		if s, ok := obj.(*corev1.Secret); ok {
			v.sync(s.Data)
		}
	}
	if _, err := factory.Core().V1().Secrets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onSecret, UpdateFunc: func(_, obj any) { onSecret(obj) },
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	return v
}

func (v *cmSecretVolume) sync(data map[string][]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(data["tls.crt"]) == 0 || bytes.Equal(data["tls.crt"], v.last) {
		return
	}
	if err := v.write(data); err != nil {
		v.err = errors.Join(v.err, err)
		return
	}
	v.last = bytes.Clone(data["tls.crt"])
	if c, err := cmParseLeaf(data["tls.crt"]); err == nil {
		v.written[c.SerialNumber.String()] = time.Now()
	}
}

func (v *cmSecretVolume) write(data map[string][]byte) error {
	ts, err := os.MkdirTemp(v.dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for k, b := range data {
		if err := os.WriteFile(filepath.Join(ts, k), b, 0o644); err != nil {
			return err
		}
	}
	dataLink := filepath.Join(v.dir, "..data")
	old, _ := os.Readlink(dataLink)
	tmp := filepath.Join(v.dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dataLink); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(data)) {
		link := filepath.Join(v.dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			return err
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(v.dir, old))
	}
	return nil
}

// has reports whether the certificate with serial is the one in the directory now.
func (v *cmSecretVolume) has(serial *big.Int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.err != nil {
		return v.err
	}
	b, err := os.ReadFile(filepath.Join(v.dir, "tls.crt"))
	if err != nil {
		return err
	}
	c, err := cmParseLeaf(b)
	if err != nil {
		return err
	}
	if c.SerialNumber.Cmp(serial) != 0 {
		return fmt.Errorf("volume has serial %s, want %s", c.SerialNumber, serial)
	}
	return nil
}

func (v *cmSecretVolume) writtenAt(serial *big.Int) time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.written[serial.String()]
}

// Err is the first error syncing the directory, if any.
func (v *cmSecretVolume) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
