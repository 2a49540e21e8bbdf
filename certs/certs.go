// Package certs holds the webhook's TLS material: it generates a CA and a serving certificate for
// clusters without cert-manager (and for local runs), and serves a certificate directory written
// by cert-manager (tls.crt, tls.key), picking up rotations without a restart.
package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// File names, as cert-manager writes them into a Secret.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// Options say what to generate.
type Options struct {
	// Service and Namespace give the DNS names <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local.
	Service, Namespace string
	// Hosts are extra SANs: DNS names or IP addresses (e.g. 127.0.0.1 for a local API server).
	Hosts []string
	// Validity of the serving certificate (the CA lives 10 times as long).
	Validity time.Duration
	// CA signs the serving certificate when set; otherwise a new CA is made.
	CA *CA
}

// CA is a certificate authority that can sign serving certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// Pool is a certificate pool holding only this CA: roots for a client that trusts it.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// NewCA makes a self-signed ECDSA P-256 CA.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Generate writes ca.crt, tls.crt and tls.key into dir (tls.key mode 0600) and returns the CA
// certificate in PEM: the caBundle of the MutatingWebhookConfiguration.
func Generate(dir string, o Options) ([]byte, error) {
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	ca := o.CA
	if ca == nil {
		var err error
		if ca, err = NewCA("magic-ip-webhook-ca", 10*o.Validity); err != nil {
			return nil, err
		}
	}
	certPEM, keyPEM, err := ca.Sign(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Key first, certificate last: a watcher that sees the new certificate finds its key.
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{KeyFile, keyPEM, 0o600}, {CAFile, ca.CertPEM, 0o644}, {CertFile, certPEM, 0o644}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, err
		}
	}
	return ca.CertPEM, nil
}

// Sign issues a serving certificate for o's names, returning certificate and key in PEM.
func (ca *CA) Sign(o Options) (certPEM, keyPEM []byte, err error) {
	if o.Service == "" && len(o.Hosts) == 0 {
		return nil, nil, errors.New("no names: set a service (and namespace) or hosts")
	}
	if o.Service != "" && o.Namespace == "" {
		return nil, nil, fmt.Errorf("service %q needs a namespace", o.Service)
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	cn := o.Service + "." + o.Namespace + ".svc"
	if o.Service == "" {
		cn = o.Hosts[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if o.Service != "" {
		base := o.Service + "." + o.Namespace + ".svc"
		tmpl.DNSNames = append(tmpl.DNSNames, base, base+".cluster.local")
	}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Watcher serves the key pair in a directory and reloads it when the files change.
type Watcher struct {
	*certwatcher.CertWatcher
}

// NewWatcher loads dir/tls.crt and dir/tls.key; it fails when they are missing or do not match.
func NewWatcher(dir string) (*Watcher, error) {
	cw, err := certwatcher.New(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load serving certificate from %s (tls.crt, tls.key): %w", dir, err)
	}
	return &Watcher{CertWatcher: cw.WithWatchInterval(10 * time.Second)}, nil
}

// Checker is a readyz check: ready while a certificate is loaded.
func (w *Watcher) Checker(_ *http.Request) error {
	c, err := w.GetCertificate(nil)
	if err != nil || c == nil {
		return fmt.Errorf("no serving certificate loaded: %v", err)
	}
	return nil
}

var _ interface{ Start(context.Context) error } = (*Watcher)(nil)
