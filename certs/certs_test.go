package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/util/wait"
	cwmetrics "sigs.k8s.io/controller-runtime/pkg/certwatcher/metrics"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

func init() {
	// The certwatcher logs through controller-runtime; keep it quiet and its warning away.
	ctrllog.SetLogger(logr.Discard())
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", pemBytes)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readCert(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, b)
}

func verify(cert *x509.Certificate, caPEM []byte, host string) error {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return errors.New("no CA certificate in the PEM")
	}
	_, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

var testOptions = Options{Service: "svc", Namespace: "ns", Hosts: []string{"127.0.0.1", "localhost"}, Validity: 24 * time.Hour}

func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls") // created by Generate
	caPEM, err := Generate(dir, testOptions)
	if err != nil {
		t.Fatal(err)
	}

	for name, wantMode := range map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644, CAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != wantMode {
			t.Errorf("%s mode %v, want %v", name, got, wantMode)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	if onDisk, err := os.ReadFile(filepath.Join(dir, CAFile)); err != nil || string(onDisk) != string(caPEM) {
		t.Errorf("%s differs from the returned CA (err %v)", CAFile, err)
	}
	if ca := parseCert(t, caPEM); !ca.IsCA {
		t.Errorf("the returned CA is not a CA")
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Errorf("tls.crt and tls.key do not make a key pair: %v", err)
	}

	cert := readCert(t, dir)
	tests := map[string]struct {
		host    string
		wantErr bool
	}{
		"service":                {host: "svc.ns.svc"},
		"service, cluster.local": {host: "svc.ns.svc.cluster.local"},
		"extra IP host":          {host: "127.0.0.1"},
		"extra DNS host":         {host: "localhost"},
		"another service":        {host: "other.ns.svc", wantErr: true},
		"another namespace":      {host: "svc.other.svc", wantErr: true},
		"another IP":             {host: "127.0.0.2", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := verify(cert, caPEM, tc.host)
			if (err != nil) != tc.wantErr {
				t.Errorf("verify for %s: error %v, want error %v", tc.host, err, tc.wantErr)
			}
		})
	}

	if cert.IsCA {
		t.Errorf("the serving certificate is a CA")
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("extKeyUsage %v, want [ServerAuth]", cert.ExtKeyUsage)
	}
	if left := time.Until(cert.NotAfter); left > testOptions.Validity || left < testOptions.Validity-time.Minute {
		t.Errorf("the certificate expires in %v, want about %v", left, testOptions.Validity)
	}
	if ca := parseCert(t, caPEM); ca.NotAfter.Before(cert.NotAfter) {
		t.Errorf("the CA expires (%v) before the certificate (%v)", ca.NotAfter, cert.NotAfter)
	}
}

func TestSign(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		opts      Options
		wantErr   bool
		wantHosts []string
	}{
		"no names":       {opts: Options{}, wantErr: true},
		"namespace only": {opts: Options{Namespace: "ns"}, wantErr: true},
		"hosts only":     {opts: Options{Hosts: []string{"::1", "webhook.example"}}, wantHosts: []string{"::1", "webhook.example"}},
		"service":        {opts: Options{Service: "a", Namespace: "b"}, wantHosts: []string{"a.b.svc", "a.b.svc.cluster.local"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Sign(tc.opts)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Sign(%+v): no error, want one", tc.opts)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Errorf("certificate and key do not match: %v", err)
			}
			for _, h := range tc.wantHosts {
				if err := verify(parseCert(t, certPEM), ca.CertPEM, h); err != nil {
					t.Errorf("verify for %s: %v", h, err)
				}
			}
		})
	}
}

func TestGenerateReusesCA(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := testOptions
	o.CA = ca
	dir1, dir2 := t.TempDir(), t.TempDir()
	ca1, err := Generate(dir1, o)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := Generate(dir2, o)
	if err != nil {
		t.Fatal(err)
	}
	if string(ca1) != string(ca.CertPEM) || string(ca2) != string(ca.CertPEM) {
		t.Fatalf("Generate with Options.CA returned another CA")
	}
	c1, c2 := readCert(t, dir1), readCert(t, dir2)
	if c1.SerialNumber.Cmp(c2.SerialNumber) == 0 {
		t.Errorf("both certificates have serial %v", c1.SerialNumber)
	}
	for _, c := range []*x509.Certificate{c1, c2} {
		if err := verify(c, ca.CertPEM, "svc.ns.svc"); err != nil {
			t.Errorf("serial %v: %v", c.SerialNumber, err)
		}
	}
}

func TestNewWatcherEmptyDir(t *testing.T) {
	dir := t.TempDir()
	w, err := NewWatcher(dir)
	if err == nil {
		t.Fatalf("NewWatcher on an empty directory: %v, want an error", w)
	}
	if !strings.Contains(err.Error(), CertFile) || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name %s in %s", err, CertFile, dir)
	}
}

func TestNewWatcherMismatchedKey(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if _, err := Generate(d, testOptions); err != nil {
			t.Fatal(err)
		}
	}
	key, err := os.ReadFile(filepath.Join(other, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWatcher(dir); err == nil {
		t.Errorf("NewWatcher with a key of another certificate: no error")
	}
}

// waitWatching returns once w's file watches are in place (Start adds them in the background):
// it touches tls.crt until the watcher reacts with a certificate read.
func waitWatching(t *testing.T, dir string) {
	t.Helper()
	reads := func() float64 {
		var m dto.Metric
		if err := cwmetrics.ReadCertificateTotal.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	base := reads()
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		now := time.Now()
		if err := os.Chtimes(filepath.Join(dir, CertFile), now, now); err != nil {
			return false, err
		}
		return reads() > base, nil
	})
	if err != nil {
		t.Fatalf("the watcher did not react to a change of %s: %v", CertFile, err)
	}
}

// servedSerial is the serial of the certificate w serves now.
func servedSerial(t *testing.T, w *Watcher) string {
	t.Helper()
	c, err := w.GetCertificate(nil)
	if err != nil || c == nil || len(c.Certificate) == 0 {
		t.Fatalf("GetCertificate: %v, %v", c, err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

func TestWatcher(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := testOptions
	o.CA = ca
	dir := t.TempDir()
	if _, err := Generate(dir, o); err != nil {
		t.Fatal(err)
	}
	first := readCert(t, dir).SerialNumber.String()

	w, err := NewWatcher(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, w); got != first {
		t.Errorf("serves serial %s, want %s (tls.crt)", got, first)
	}
	if err := w.Checker(nil); err != nil {
		t.Errorf("Checker: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Start: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Start did not return after its context ended")
		}
	})

	waitWatching(t, dir)

	// Rotate: the same CA signs a new certificate into the same directory.
	if _, err := Generate(dir, o); err != nil {
		t.Fatal(err)
	}
	second := readCert(t, dir).SerialNumber.String()
	if second == first {
		t.Fatalf("Generate gave the same serial again")
	}
	// The file events make it at once; the watcher's 10 s poll would be the fallback.
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 15*time.Second, true, func(context.Context) (bool, error) {
		return servedSerial(t, w) == second, nil
	})
	if err != nil {
		t.Fatalf("still serving serial %s, want %s: %v", servedSerial(t, w), second, err)
	}
	if err := w.Checker(nil); err != nil {
		t.Errorf("Checker after rotation: %v", err)
	}
}
