// Command noopwebhook is the benchmark's baseline: an admission webhook that allows everything
// (at /mutate; at /patch, with a fixed patch given by --patch-file), served like magic-ip-webhook
// serves its handler: controller-runtime's webhook server (with its
// request metrics), the same TLS settings (HTTP/1.1 only, TLS 1.2 and up), its own process.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

func main() {
	dir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	port := flag.Int("port", 9443, "HTTPS port on 127.0.0.1")
	patchFile := flag.String("patch-file", "", "a JSON patch that /patch returns for every request (empty: no /patch)")
	flag.Parse()
	// As any webhook built on controller-runtime should: without a logger set, controller-runtime
	// keeps every per-request logger it derives, and the growing heap would make this baseline's
	// garbage collection rarer than a real webhook's.
	ctrl.SetLogger(logr.Discard())
	// GET /connections: how many connections clients opened (a client that does not keep its
	// connections alive opens one per request, each with a TLS handshake). Every handshake,
	// resumed or not, starts with a ClientHello.
	var conns atomic.Int64
	srv := crwebhook.NewServer(crwebhook.Options{Host: "127.0.0.1", Port: *port, CertDir: *dir, TLSOpts: []func(*tls.Config){func(c *tls.Config) {
		c.MinVersion = tls.VersionTLS12
		c.NextProtos = []string{"http/1.1"}
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { conns.Add(1); return nil, nil }
	}}})
	srv.Register("/mutate", &admission.Webhook{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		return admission.Allowed("")
	})})
	if *patchFile != "" {
		h, err := fixedPatch(*patchFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		srv.Register("/patch", &admission.Webhook{Handler: h})
	}
	srv.WebhookMux().HandleFunc("GET /connections", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, conns.Load()) }) // after Register, which creates the mux
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// fixedPatch is a handler that allows every request with the JSON patch in file, as it is: the
// API server's cost of applying a webhook's patch, without the cost of computing it.
func fixedPatch(file string) (admission.Handler, error) {
	patch, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read the patch: %w", err)
	}
	patchType := admissionv1.PatchTypeJSONPatch
	return admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		resp := admission.Allowed("")
		resp.Patch, resp.PatchType = patch, &patchType // already encoded: Complete marshals only resp.Patches
		return resp
	}), nil
}
