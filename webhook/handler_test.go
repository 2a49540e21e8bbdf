package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	evanjsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr/testr"
	dto "github.com/prometheus/client_model/go"
	jsonpatch "gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func testScheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// newInjector serves mips from a fake client; funcs, when given, intercept its calls.
func newInjector(t testing.TB, funcs *interceptor.Funcs, mips ...v1alpha1.MagicIP) *Injector {
	t.Helper()
	b := fake.NewClientBuilder().WithScheme(testScheme(t)).WithStatusSubresource(&v1alpha1.MagicIP{})
	for i := range mips {
		b = b.WithObjects(mips[i].DeepCopy())
	}
	if funcs != nil {
		b = b.WithInterceptorFuncs(*funcs)
	}
	return &Injector{MagicIPs: b.Build(), Log: testr.NewWithInterface(t, testr.Options{}), Injections: NewInjectionsMetric()}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// podRequest is the AdmissionRequest the API server sends for a pod CREATE in namespace apps.
func podRequest(raw []byte, mods ...func(*admission.Request)) admission.Request {
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       "0b1c2d3e-0000-4000-8000-000000000001",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "apps",
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
		DryRun:    ptr.To(false),
	}}
	for _, mod := range mods {
		mod(&req)
	}
	return req
}

// refMagicIPs are the reference MagicIPs: datadog is injected, datadog-copy (younger, same claim)
// loses the conflict and is not.
func refMagicIPs() []v1alpha1.MagicIP {
	dd := newMIP("datadog", testAddr, 0,
		withPorts(
			v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
			v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
		),
		withInject(v1alpha1.Inject{
			ExtraEnv: []v1alpha1.EnvTemplate{
				{Name: "DD_AGENT_HOST", Value: "{address}"},
				{Name: "DD_TRACE_AGENT_URL", Value: "http://{address}:{port:apm}"},
			},
			Hostnames:    []string{"datadog.node.local"},
			NodeMetadata: true,
		}))
	cp := newMIP("datadog-copy", testAddr, 5, withInject(v1alpha1.Inject{Hostnames: []string{"copy.local"}}))
	return []v1alpha1.MagicIP{dd, cp}
}

// refPod is the reference pod: an init container without env, a container that sets LOG_LEVEL and
// its own DD_AGENT_HOST, a container without env, a hostAlias of its own.
func refPod() *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "web-", Namespace: "apps",
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{"team": "web"},
		},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "migrate", Image: "migrate:1"}},
			Containers: []corev1.Container{
				{Name: "app", Image: "web:1", Env: envs(val("LOG_LEVEL", "info"), val("DD_AGENT_HOST", "10.0.0.5"))},
				{Name: "proxy", Image: "envoy:1"},
			},
			HostAliases: []corev1.HostAlias{{IP: "10.0.0.1", Hostnames: []string{"db.local"}}},
		},
	}
}

// patchOps decodes the JSON patch of resp.
func patchOps(t *testing.T, resp admission.Response) []jsonpatch.JsonPatchOperation {
	t.Helper()
	var ops []jsonpatch.JsonPatchOperation
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatalf("patch %s: %v", resp.Patch, err)
	}
	return ops
}

// applyPatch applies a JSON patch to raw and decodes the result.
func applyPatch(t *testing.T, raw, patch []byte) *corev1.Pod {
	t.Helper()
	p, err := evanjsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", patch, err)
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(out, pod); err != nil {
		t.Fatalf("decode patched pod: %v", err)
	}
	return pod
}

func injections(t *testing.T, in *Injector, mip string) float64 {
	t.Helper()
	var m dto.Metric
	if err := in.Injections.WithLabelValues(mip).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestHandle(t *testing.T) {
	refRaw := mustJSON(t, refPod())
	refWant := refPod()
	mutate(refWant, endpoints(refMagicIPs()[:1]))
	proxyEnvFrom := func(p *corev1.Pod) {
		p.Spec.Containers[1].EnvFrom = []corev1.EnvFromSource{{Prefix: "DD_", ConfigMapRef: &corev1.ConfigMapEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "proxy-env"}}}}
	}
	envFromPod := refPod()
	proxyEnvFrom(envFromPod)
	envFromRaw, envFromWant := mustJSON(t, envFromPod), envFromPod.DeepCopy()
	mutate(envFromWant, endpoints(refMagicIPs()[:1]))
	if got := envOf(envFromWant.Spec.Containers[1]); got["DD_AGENT_HOST"] != "" || got["DATADOG_MAGIC_HOST"] == "" {
		t.Fatalf("want proxy without DD_AGENT_HOST, with DATADOG_MAGIC_HOST: %v", got)
	}
	tests := map[string]struct {
		req         admission.Request
		mips        []v1alpha1.MagicIP
		funcs       *interceptor.Funcs
		want        *corev1.Pod // the pod after the patch; nil: no patch expected
		wantWarning string
		wantCount   float64 // magic_ip_webhook_injections_total{magicip="datadog"}
	}{
		"pod creation: patched": {
			req: podRequest(refRaw), mips: refMagicIPs(), want: refWant, wantCount: 1,
		},
		"dry run: patched the same, not counted": {
			req:  podRequest(refRaw, func(r *admission.Request) { r.DryRun = ptr.To(true) }),
			mips: refMagicIPs(), want: refWant,
		},
		"UPDATE: allowed, no patch": {
			req:  podRequest(refRaw, func(r *admission.Request) { r.Operation = admissionv1.Update; r.OldObject = r.Object }),
			mips: refMagicIPs(),
		},
		"CONNECT: allowed, no patch": {
			req:  podRequest(refRaw, func(r *admission.Request) { r.Operation = admissionv1.Connect }),
			mips: refMagicIPs(),
		},
		"not a pod: allowed, no patch": {
			req: podRequest(refRaw, func(r *admission.Request) {
				r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			}),
			mips: refMagicIPs(),
		},
		"a Pod kind of another group: allowed, no patch": {
			req: podRequest(refRaw, func(r *admission.Request) {
				r.Kind = metav1.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Pod"}
			}),
			mips: refMagicIPs(),
		},
		"undecodable pod: allowed with a warning": {
			req: podRequest([]byte(`{"spec":{"containers":"not a list"}}`)), mips: refMagicIPs(),
			wantWarning: "not decodable",
		},
		"not JSON: allowed with a warning": {
			req: podRequest([]byte(`{"spec":`)), mips: refMagicIPs(), wantWarning: "not decodable",
		},
		"no MagicIPs: allowed, no patch": {req: podRequest(refRaw)},
		"select names no MagicIP: allowed, no patch": {
			req: podRequest(mustJSON(t, testPod(withAnnotation(SelectAnnotation, "other")))), mips: refMagicIPs(),
		},
		"only a conflict loser selected: allowed, no patch": {
			req: podRequest(mustJSON(t, testPod(withAnnotation(SelectAnnotation, "datadog-copy")))), mips: refMagicIPs(),
		},
		"envFrom may set some variables: patched without them, with a warning naming them": {
			req: podRequest(envFromRaw), mips: refMagicIPs(), want: envFromWant, wantCount: 1,
			wantWarning: `magic-ip: container proxy: DD_AGENT_HOST, DD_TRACE_AGENT_URL not injected: envFrom configMapRef proxy-env (prefix "DD_") may set them, and an injected value would override it`,
		},
		"only an IPv6 MagicIP (no agent programs it): allowed, no patch": {
			req: podRequest(refRaw), mips: []v1alpha1.MagicIP{newMIP("v6", "fd00::10", 0, withInject(v1alpha1.Inject{Hostnames: []string{"v6.local"}}))},
		},
		"already injected (reinvocation): allowed, no patch": {
			req: podRequest(mustJSON(t, refWant)), mips: refMagicIPs(),
		},
		"MagicIPs unavailable: allowed with a warning": {
			req: podRequest(refRaw), mips: refMagicIPs(),
			funcs: &interceptor.Funcs{List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
				return errors.New("cache not synced")
			}},
			wantWarning: "MagicIPs unavailable",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := newInjector(t, tc.funcs, tc.mips...)
			resp := in.Handle(t.Context(), tc.req)
			if !resp.Allowed {
				t.Fatalf("Allowed = false (%v), want true: the webhook never refuses a pod", resp.Result)
			}
			if tc.want == nil {
				if len(resp.Patches) != 0 || len(resp.Patch) != 0 || resp.PatchType != nil {
					t.Errorf("got patch %s (type %v), want none", resp.Patch, resp.PatchType)
				}
			} else {
				if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Errorf("PatchType = %v, want JSONPatch", resp.PatchType)
				}
				if got := applyPatch(t, tc.req.Object.Raw, resp.Patch); !equality.Semantic.DeepEqual(got, tc.want) {
					t.Errorf("patched pod:\ngot  %s\nwant %s", toJSON(got), toJSON(tc.want))
				}
			}
			warnings := strings.Join(resp.Warnings, "\n")
			switch {
			case tc.wantWarning == "" && warnings != "":
				t.Errorf("warnings %q, want none", warnings)
			case !strings.Contains(warnings, tc.wantWarning):
				t.Errorf("warnings %q, want one containing %q", warnings, tc.wantWarning)
			}
			if got := injections(t, in, "datadog"); got != tc.wantCount {
				t.Errorf("injections{magicip=datadog} = %v, want %v", got, tc.wantCount)
			}
			if got := injections(t, in, "datadog-copy"); got != 0 {
				t.Errorf("injections{magicip=datadog-copy} = %v, want 0", got)
			}
		})
	}
}

// TestHandleGolden pins the JSON patch for the reference pod and MagicIPs
// (testdata/reference-patch.json; go test -run TestHandleGolden -update rewrites it).
func TestHandleGolden(t *testing.T) {
	in := newInjector(t, nil, refMagicIPs()...)
	raw := mustJSON(t, refPod())
	for _, dryRun := range []bool{false, true} {
		t.Run("dryRun="+strconv.FormatBool(dryRun), func(t *testing.T) {
			resp := in.Handle(t.Context(), podRequest(raw, func(r *admission.Request) { r.DryRun = &dryRun }))
			if !resp.Allowed {
				t.Fatalf("Allowed = false: %v", resp.Result)
			}
			// The operations in the order the API server applies them ("-" appends and the
			// ".../env/0" inserts, last variable first, depend on it).
			var indented bytes.Buffer
			if err := json.Indent(&indented, resp.Patch, "", "  "); err != nil {
				t.Fatalf("patch %s: %v", resp.Patch, err)
			}
			got := append(indented.Bytes(), '\n')
			golden := filepath.Join("testdata", "reference-patch.json")
			if *update && !dryRun {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./webhook -run TestHandleGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("patch differs from %s:\ngot\n%s\nwant\n%s", golden, got, want)
			}
			// The golden operations, applied to the reference pod, give what Mutate gives.
			wantPod := refPod()
			mutate(wantPod, endpoints(refMagicIPs()[:1]))
			if gotPod := applyPatch(t, raw, resp.Patch); !equality.Semantic.DeepEqual(gotPod, wantPod) {
				t.Errorf("patched pod:\ngot  %s\nwant %s", toJSON(gotPod), toJSON(wantPod))
			}
		})
	}
}

// reviewBody is an admission/v1 AdmissionReview for req.
func reviewBody(t *testing.T, req admission.Request) []byte {
	t.Helper()
	return mustJSON(t, admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &req.AdmissionRequest,
	})
}

// TestWebhookServeHTTP goes through controller-runtime's HTTP handling: the body checks answer in
// the AdmissionReview (result.code), the HTTP status stays 200.
func TestWebhookServeHTTP(t *testing.T) {
	raw := mustJSON(t, refPod())
	valid := podRequest(raw)
	tests := map[string]struct {
		body        []byte
		contentType string
		wantCode    int32
		wantAllowed bool
		wantPatch   bool
	}{
		"malformed body":     {body: []byte(`{"request": `), contentType: "application/json", wantCode: http.StatusBadRequest},
		"empty body":         {body: nil, contentType: "application/json", wantCode: http.StatusBadRequest},
		"wrong content type": {body: reviewBody(t, valid), contentType: "text/plain", wantCode: http.StatusBadRequest},
		"valid review":       {body: reviewBody(t, valid), contentType: "application/json", wantCode: http.StatusOK, wantAllowed: true, wantPatch: true},
		"valid review, an UPDATE": {
			body:        reviewBody(t, podRequest(raw, func(r *admission.Request) { r.Operation = admissionv1.Update; r.OldObject = r.Object })),
			contentType: "application/json", wantCode: http.StatusOK, wantAllowed: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			wh := newInjector(t, nil, refMagicIPs()...).Webhook()
			req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, Path, bytes.NewReader(tc.body))
			if tc.body == nil {
				req.Body = http.NoBody
			}
			req.Header.Set("Content-Type", tc.contentType)
			rec := httptest.NewRecorder()
			wh.ServeHTTP(rec, req)

			if rec.Code != http.StatusOK {
				t.Errorf("HTTP status %d, want 200 (the code is in the review)", rec.Code)
			}
			var review admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil {
				t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body)
			}
			resp := review.Response
			if resp == nil {
				t.Fatalf("AdmissionReview without a response: %s", rec.Body)
			}
			if resp.Result == nil || resp.Result.Code != tc.wantCode {
				t.Errorf("result %+v, want code %d", resp.Result, tc.wantCode)
			}
			if resp.Allowed != tc.wantAllowed {
				t.Errorf("allowed = %v, want %v", resp.Allowed, tc.wantAllowed)
			}
			if tc.wantAllowed && resp.UID != valid.UID {
				t.Errorf("uid = %q, want the request's %q", resp.UID, valid.UID)
			}
			if tc.wantAllowed && (review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview") {
				t.Errorf("review is %s %s, want admission.k8s.io/v1 AdmissionReview", review.APIVersion, review.Kind)
			}
			if !tc.wantPatch {
				if len(resp.Patch) != 0 || resp.PatchType != nil {
					t.Errorf("patch %s (type %v), want none", resp.Patch, resp.PatchType)
				}
				return
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Errorf("patchType = %v, want JSONPatch", resp.PatchType)
			}
			got := applyPatch(t, raw, resp.Patch)
			want := refPod()
			mutate(want, endpoints(refMagicIPs()[:1]))
			if !equality.Semantic.DeepEqual(got, want) {
				t.Errorf("patched pod:\ngot  %s\nwant %s", toJSON(got), toJSON(want))
			}
		})
	}
}

// TestHandleKeepsFieldsUnknownToThisVersion: an API server newer than the k8s.io/api this webhook
// is built with sends pod fields the webhook cannot decode (as init containers' restartPolicy was
// for older webhooks). The patch must not remove them: only what the webhook adds may change.
func TestHandleKeepsFieldsUnknownToThisVersion(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(mustJSON(t, refPod()), &doc); err != nil {
		t.Fatal(err)
	}
	spec := doc["spec"].(map[string]any)
	spec["futurePodField"] = map[string]any{"enabled": true}
	app := spec["containers"].([]any)[0].(map[string]any)
	app["futureContainerField"] = "keep-me"
	// The injected variables go before the container's own: its entries must be moved, not rewritten.
	app["env"].([]any)[0].(map[string]any)["futureEnvField"] = "keep-me-too"
	raw := mustJSON(t, doc)

	in := newInjector(t, nil, refMagicIPs()...)
	resp := in.Handle(t.Context(), podRequest(raw))
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("allowed=%v with patch %s, want allowed with a patch", resp.Allowed, resp.Patch)
	}
	for _, op := range patchOps(t, resp) {
		if op.Operation != "add" {
			t.Errorf("BUG: the patch has %q %s: fields unknown to the webhook's k8s.io/api version are stripped from the user's pod (patch computed from the re-encoded typed pod)", op.Operation, op.Path)
		}
	}
	p, err := evanjsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	gotSpec := got["spec"].(map[string]any)
	if _, ok := gotSpec["futurePodField"]; !ok {
		t.Errorf("BUG: spec.futurePodField is gone after the patch")
	}
	gotApp := gotSpec["containers"].([]any)[0].(map[string]any)
	if v := gotApp["futureContainerField"]; v != "keep-me" {
		t.Errorf("BUG: spec.containers[0].futureContainerField = %v after the patch, want keep-me", v)
	}
	env := gotApp["env"].([]any)
	if v := env[len(env)-2].(map[string]any); v["name"] != "LOG_LEVEL" || v["futureEnvField"] != "keep-me-too" {
		t.Errorf("BUG: the container's LOG_LEVEL entry is %v after the patch, want it as it was (with futureEnvField), after the injected ones", v)
	}
}

// TestWebhookPanicDoesNotRefusePod: Handle promises never to refuse a pod ("the worst outcome of a
// problem here is a pod without injection") and the configuration fails open (failurePolicy:
// Ignore). A recovered panic is an answer, not a call failure, so failurePolicy does not apply:
// the answer itself must allow the pod.
func TestWebhookPanicDoesNotRefusePod(t *testing.T) {
	in := newInjector(t, &interceptor.Funcs{List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
		panic("boom")
	}}, refMagicIPs()...)
	req := podRequest(mustJSON(t, refPod()))
	resp := in.Webhook().Handle(t.Context(), req)
	if resp.UID != req.UID {
		t.Errorf("uid = %q, want %q", resp.UID, req.UID)
	}
	if !resp.Allowed {
		t.Errorf("BUG: a panic in the handler is answered allowed=false (%v): the API server refuses the pod although Handle never refuses one and the webhook is meant to fail open", resp.Result)
	}
	if len(resp.Patches) != 0 || len(resp.Patch) != 0 {
		t.Errorf("patch %s after a panic, want none", resp.Patch)
	}
	if len(resp.Warnings) == 0 {
		t.Errorf("no warning after a panic: the user should learn that nothing was injected")
	}
}

// TestHandlePatchShapes: pods as the API server may send them (fields absent, empty or null), the
// patch applies to the raw request object and gives what Mutate gives, with "add" operations only.
func TestHandlePatchShapes(t *testing.T) {
	mips := []v1alpha1.MagicIP{
		ddMIP(),
		newMIP("b", testAddr, 0, withPorts(v1alpha1.MagicIPPort{Name: "x", Port: 9000}),
			withInject(v1alpha1.Inject{Env: ptr.To(false), Hostnames: []string{"b.local"}})),
	}
	const app = `{"name":"app","image":"nginx"}`
	tests := map[string]string{
		"no annotations, no hostAliases, no env": `{"metadata":{"name":"p"},"spec":{"containers":[` + app + `]}}`,
		"empty and null fields": `{"metadata":{"name":"p","annotations":{}},"spec":{"hostAliases":[],"initContainers":[{"name":"i","env":null}],` +
			`"containers":[{"name":"app","env":[]}]}}`,
		"null annotations":                          `{"metadata":{"annotations":null},"spec":{"containers":[` + app + `]}}`,
		"an injected annotation with another value": `{"metadata":{"annotations":{"magic-ip.dev/injected":"old","x":"y"}},"spec":{"containers":[` + app + `]}}`,
		"hostAliases: the entry for the IP is the second, another follows": `{"metadata":{},"spec":{"containers":[` + app + `],"hostAliases":[` +
			`{"ip":"10.0.0.1","hostnames":["a"]},{"ip":"` + testAddr + `","hostnames":["mine"]},{"ip":"10.0.0.2","hostnames":["c"]}]}}`,
		"hostAliases: the entry for the IP has no hostnames": `{"metadata":{},"spec":{"containers":[` + app + `],"hostAliases":[{"ip":"` + testAddr + `"}]}}`,
		"env: some set by the user, in several containers": `{"metadata":{},"spec":{"initContainers":[{"name":"i","env":[{"name":"DD_MAGIC_PORT","value":"1"}]}],` +
			`"containers":[{"name":"a","env":[{"name":"X","value":"1"}]},{"name":"b"},{"name":"c","env":[{"name":"DD_AGENT_HOST","value":"me"},{"name":"Y","value":"2"}]}]}}`,
	}
	for name, raw := range tests {
		t.Run(name, func(t *testing.T) {
			in := newInjector(t, nil, mips...)
			resp := in.Handle(t.Context(), podRequest([]byte(raw)))
			if !resp.Allowed || len(resp.Warnings) > 0 {
				t.Fatalf("allowed=%v warnings=%q", resp.Allowed, resp.Warnings)
			}
			for _, op := range patchOps(t, resp) {
				if op.Operation != "add" {
					t.Errorf("patch operation %s %s, want only adds", op.Operation, op.Path)
				}
			}
			want := &corev1.Pod{}
			if err := json.Unmarshal([]byte(raw), want); err != nil {
				t.Fatal(err)
			}
			if !mutate(want, NewCatalog(mips).For(want.Annotations)) {
				t.Fatal("Mutate() = false")
			}
			if got := applyPatch(t, []byte(raw), resp.Patch); !equality.Semantic.DeepEqual(got, want) {
				t.Errorf("patched pod:\ngot  %s\nwant %s\npatch %s", toJSON(got), toJSON(want), resp.Patch)
			}
		})
	}
}

// TestHandleCatalogFollowsInvalidate: requests reuse the catalog (no read of the MagicIPs per
// request) until a MagicIP event invalidates it; the next request then sees the change.
func TestHandleCatalogFollowsInvalidate(t *testing.T) {
	lists := 0
	in := newInjector(t, &interceptor.Funcs{List: func(ctx context.Context, c client.WithWatch, l client.ObjectList, o ...client.ListOption) error {
		lists++
		return c.List(ctx, l, o...)
	}}, newMIP("a", testAddr, 0))
	injected := func() string {
		t.Helper()
		resp := in.Handle(t.Context(), podRequest(mustJSON(t, testPod())))
		if !resp.Allowed {
			t.Fatalf("not allowed: %v", resp.Result)
		}
		return applyPatch(t, mustJSON(t, testPod()), resp.Patch).Annotations[InjectedAnnotation]
	}
	if got := injected(); got != "a" {
		t.Fatalf("injected %q, want a", got)
	}
	b := newMIP("b", testAddr2, 1)
	if err := in.MagicIPs.(client.Client).Create(t.Context(), &b); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := injected(); got != "a" {
			t.Fatalf("injected %q before Invalidate, want the cached catalog (a)", got)
		}
	}
	if lists != 1 {
		t.Errorf("%d reads of the MagicIPs for 4 requests, want 1", lists)
	}
	in.Invalidate()
	if got := injected(); got != "a,b" {
		t.Errorf("injected %q after Invalidate, want a,b", got)
	}
	if lists != 2 {
		t.Errorf("%d reads of the MagicIPs after Invalidate, want 2", lists)
	}
}

// envOf maps a container's variables to their values.
func envOf(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}
