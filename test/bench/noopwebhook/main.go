// Command noopwebhook is the benchmark's baseline: an admission webhook that allows everything,
// served by the same controller-runtime machinery and TLS as magic-ip-webhook, in its own process.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

func main() {
	dir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	addr := flag.String("listen", "127.0.0.1:0", "listen address")
	flag.Parse()
	// As any webhook built on controller-runtime should: without a logger set, controller-runtime
	// keeps every per-request logger it derives, and the growing heap would make this baseline's
	// garbage collection rarer than a real webhook's.
	ctrl.SetLogger(logr.Discard())
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dir, "tls.crt"), filepath.Join(*dir, "tls.key"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", *addr, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String()) // the bench reads the address from the first line
	hook := &admission.Webhook{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		return admission.Allowed("")
	})}
	// GET /connections: how many connections clients opened (a client that does not keep its
	// connections alive opens one per request, each with a TLS handshake).
	var conns atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /connections", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, conns.Load()) })
	mux.Handle("/", hook)
	srv := &http.Server{Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() { <-ctx.Done(); _ = srv.Close() }()
	_ = srv.Serve(ln)
}
