package webhook

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// BenchmarkServeHTTP: one admission request through controller-runtime's admission webhook, in
// process (no TLS, no network), for magic-ip's handler and for a handler that allows everything:
// the difference is what magic-ip's own work costs per request. Run with -benchmem.
func BenchmarkServeHTTP(b *testing.B) {
	review := mustJSON(b, map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": podRequest(mustJSON(b, refPod())).AdmissionRequest,
	})
	inj := newInjector(b, nil, refMagicIPs()...)
	inj.Log = logr.Discard()
	for _, h := range []struct {
		name string
		hook *admission.Webhook
	}{
		{"magic-ip", inj.Webhook()},
		{"no-op", &admission.Webhook{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
			return admission.Allowed("")
		})}},
	} {
		b.Run(h.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(review))
				req.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				h.hook.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("HTTP %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}
