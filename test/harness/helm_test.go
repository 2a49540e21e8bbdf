package harness

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// These tests render the Helm chart with helm (no cluster, no root). Server-side validation of
// the rendered objects is test/e2e's job.

var updateHelmGolden = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the current chart")

// seedSet are the values of the seed chart's one-liner:
//
//	helm upgrade 169-254-210-210 manifests/helm/magic-ip --install \
//	  --set config.ipAddress=169.254.210.210 --set config.port=9200 --set config.selector=app=apm-server
var seedSet = []string{"config.ipAddress=169.254.210.210", "config.port=9200", "config.selector=app=apm-server"}

const crdSource = "# Source: magic-ip/crds/"

func helmRender(t *testing.T, release, namespace string, set ...string) []byte {
	t.Helper()
	out, err := HelmTemplate(release, namespace, set...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// splitDocs splits helm's output into its documents (the text after each "---" line).
func helmDocs(b []byte) []string {
	var docs []string
	for _, d := range strings.Split("\n"+string(b), "\n---\n") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, strings.TrimPrefix(d, "\n"))
		}
	}
	return docs
}

// withoutCRDs drops the documents from the chart's crds/ directory (TestHelmCRDIsTheGeneratedOne
// covers them), so the golden file does not change with every API change.
func helmWithoutCRDs(b []byte) []byte {
	var keep []string
	dropNext := false
	for _, d := range helmDocs(b) {
		if dropNext {
			dropNext = false
			continue
		}
		if strings.HasPrefix(d, crdSource) {
			// The CRD file starts with "---": helm's "# Source:" line is then a document of its own.
			dropNext = !strings.Contains(d, "\nkind:")
			continue
		}
		keep = append(keep, "---\n"+strings.TrimSuffix(d, "\n")+"\n")
	}
	return []byte(strings.Join(keep, ""))
}

type helmObject = map[string]any

func helmObjects(t *testing.T, b []byte) []helmObject {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var objs []helmObject
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		var o helmObject
		if err := utilyaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("decode %q: %v", doc, err)
		}
		if o != nil {
			objs = append(objs, o)
		}
	}
	return objs
}

func helmKey(o helmObject) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%s/%s", o["kind"], md["name"])
}

func helmByKey(objs []helmObject) map[string]helmObject {
	m := map[string]helmObject{}
	for _, o := range objs {
		m[helmKey(o)] = o
	}
	return m
}

func helmKinds(objs []helmObject) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, helmKey(o))
	}
	slices.Sort(ks)
	return ks
}

func TestHelmSeedGolden(t *testing.T) {
	got := helmWithoutCRDs(helmRender(t, "169-254-210-210", "default", seedSet...))
	golden := filepath.Join("testdata", "helm-seed.golden.yaml")
	if *updateHelmGolden {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run: go test ./test/harness -run TestHelmSeedGolden -update)", err)
	}
	if !bytes.Equal(got, want) {
		g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(g) || i < len(w); i++ {
			var gl, wl string
			if i < len(g) {
				gl = g[i]
			}
			if i < len(w) {
				wl = w[i]
			}
			if gl != wl {
				t.Fatalf("rendered chart differs from %s at line %d:\n got: %q\nwant: %q\n(if the change is intended: go test ./test/harness -run TestHelmSeedGolden -update)", golden, i+1, gl, wl)
			}
		}
	}
}

// TestHelmSeedMagicIP decodes the seed-style MagicIP strictly into the API type.
func TestHelmSeedMagicIP(t *testing.T) {
	objs := helmByKey(helmObjects(t, helmRender(t, "169-254-210-210", "apm", seedSet...)))
	o, ok := objs["MagicIP/169-254-210-210"]
	if !ok {
		t.Fatalf("no MagicIP 169-254-210-210 in %v", slices.Sorted(maps.Keys(objs)))
	}
	b, _ := json.Marshal(o)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m v1alpha1.MagicIP
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("MagicIP does not decode into v1alpha1.MagicIP: %v\n%s", err, b)
	}
	want := v1alpha1.MagicIPSpec{
		Address: "169.254.210.210",
		Ports:   []v1alpha1.MagicIPPort{{Name: "port-9200", Port: 9200, Protocol: v1alpha1.ProtocolTCP}},
		Producer: v1alpha1.Producer{Namespace: "apm",
			Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm-server"}}},
	}
	if !reflect.DeepEqual(m.Spec, want) {
		t.Errorf("spec = %+v, want %+v", m.Spec, want)
	}
	if m.Namespace != "" {
		t.Errorf("MagicIP is cluster-scoped, has namespace %q", m.Namespace)
	}
	// Service names must be DNS-1035 labels: the fullname gets a letter in front of the address.
	if _, ok := objs["Service/magic-ip-169-254-210-210-webhook"]; !ok {
		t.Errorf("no Service magic-ip-169-254-210-210-webhook in %v", slices.Sorted(maps.Keys(objs)))
	}
}

func TestHelmConfigVariants(t *testing.T) {
	objs := helmByKey(helmObjects(t, helmRender(t, "mip", "obs",
		"config.ipAddress=169.254.20.10", "config.port=53", "config.protocol=udp", "config.selector=k8s-app=node-local-dns\\,tier=node",
		"config.namespace=kube-system", "config.hostInterface=cni0", "config.verbose=true", "config.pollInterval=5",
		"extraVars.MAGIC_IP_CLEANUP_ON_EXIT=true", "agent.extraArgs[0]=--external-interfaces=eth0")))
	mip := objs["MagicIP/169-254-20-10"]
	if mip == nil {
		t.Fatalf("no MagicIP 169-254-20-10 in %v", slices.Sorted(maps.Keys(objs)))
	}
	spec, _ := json.Marshal(mip["spec"])
	if want := `{"address":"169.254.20.10","ports":[{"name":"port-53","port":53,"protocol":"UDP"}],"producer":{"namespace":"kube-system","selector":{"matchLabels":{"k8s-app":"node-local-dns","tier":"node"}}}}`; string(spec) != want {
		t.Errorf("MagicIP spec\n got %s\nwant %s", spec, want)
	}
	ds := objs["DaemonSet/mip-magic-ip-agent"]
	if ds == nil {
		t.Fatalf("no DaemonSet mip-magic-ip-agent in %v", slices.Sorted(maps.Keys(objs)))
	}
	c := helmDig(ds, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	args, _ := json.Marshal(c["args"])
	if want := `["-v=4","--external-interfaces=eth0"]`; string(args) != want {
		t.Errorf("agent args %s, want %s", args, want)
	}
	env := map[string]any{}
	for _, e := range c["env"].([]any) {
		e := e.(map[string]any)
		env[e["name"].(string)] = e["value"]
	}
	for k, v := range map[string]string{"MAGIC_IP_HOST_INTERFACE": "cni0", "MAGIC_IP_RESYNC_PERIOD": "5s", "MAGIC_IP_CLEANUP_ON_EXIT": "true"} {
		if env[k] != v {
			t.Errorf("agent env %s = %v, want %q", k, env[k], v)
		}
	}

	for _, bad := range [][]string{
		{"config.ipAddress=169.254.1.1", "config.selector=app=x"},                 // no port
		{"config.ipAddress=169.254.1.1", "config.port=80"},                        // no selector
		{"config.ipAddress=169.254.1.1", "config.port=80", "config.selector=app"}, // not key=value
		{"config.ipAddress=169.254.1.1", "config.port=80", "config.selector=a=b", "config.protocol=sctp"},
		{"config.pollInterval=0.5"},
	} {
		if _, err := HelmTemplate("mip", "obs", bad...); err == nil {
			t.Errorf("--set %v rendered; want an error", bad)
		}
	}
}

// TestHelmNamespaceFollowsRelease: nothing names magic-ip-system when the release lives elsewhere.
func TestHelmNamespaceFollowsRelease(t *testing.T) {
	for _, cm := range []string{"true", "false"} {
		out := helmWithoutCRDs(helmRender(t, "mip", "observability", append(seedSet, "certManager.enabled="+cm)...))
		if bytes.Contains(out, []byte("magic-ip-system")) {
			t.Errorf("certManager.enabled=%s: the output names magic-ip-system:\n%s", cm, out)
		}
		for _, o := range helmObjects(t, out) {
			md := o["metadata"].(map[string]any)
			if ns, ok := md["namespace"]; ok && ns != "observability" {
				t.Errorf("%s in namespace %v", helmKey(o), ns)
			}
		}
	}
}

func TestHelmWithoutCertManager(t *testing.T) {
	objs := helmObjects(t, helmRender(t, "magic-ip", "mip", "certManager.enabled=false"))
	m := helmByKey(objs)
	for _, k := range helmKinds(objs) {
		if strings.HasPrefix(k, "Issuer/") || strings.HasPrefix(k, "Certificate/") {
			t.Errorf("certManager.enabled=false renders %s", k)
		}
	}
	s := m["Secret/magic-ip-webhook-tls"]
	if s == nil {
		t.Fatalf("no Secret magic-ip-webhook-tls in %v", helmKinds(objs))
	}
	data := s["data"].(map[string]any)
	pemOf := func(k string) []byte {
		b, err := base64.StdEncoding.DecodeString(data[k].(string))
		if err != nil {
			t.Fatalf("Secret data %s: %v", k, err)
		}
		return b
	}
	mwc := m["MutatingWebhookConfiguration/magic-ip"]
	if mwc == nil {
		t.Fatalf("no MutatingWebhookConfiguration magic-ip in %v", helmKinds(objs))
	}
	if ann := helmDig(mwc, "metadata", "annotations"); ann != nil {
		t.Errorf("MutatingWebhookConfiguration annotations %v: no cert-manager without cert-manager", ann)
	}
	wh := helmDig(mwc, "webhooks").([]any)[0].(map[string]any)
	if got := helmDig(wh, "clientConfig", "caBundle"); got != data["ca.crt"] {
		t.Errorf("caBundle is not the Secret's ca.crt")
	}
	parse := func(b []byte) *x509.Certificate {
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("no PEM block in %q", b)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca, leaf := parse(pemOf("ca.crt")), parse(pemOf("tls.crt"))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"magic-ip-webhook.mip.svc", "magic-ip-webhook.mip.svc.cluster.local"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	if !bytes.Contains(pemOf("tls.key"), []byte("PRIVATE KEY")) {
		t.Errorf("tls.key is not a PEM private key")
	}
}

func TestHelmWithoutWebhook(t *testing.T) {
	objs := helmObjects(t, helmWithoutCRDs(helmRender(t, "magic-ip", "mip", "webhook.enabled=false")))
	want := []string{"ClusterRole/magic-ip-agent", "ClusterRole/magic-ip-view", "ClusterRoleBinding/magic-ip-agent", "DaemonSet/magic-ip-agent", "ServiceAccount/magic-ip-agent"}
	if got := helmKinds(objs); !slices.Equal(got, want) {
		t.Errorf("webhook.enabled=false renders %v, want %v", got, want)
	}
}

// TestHelmCRDIsTheGeneratedOne: the chart's crds/ holds the CRD `make manifests` generates
// (`make verify` runs this test). templates/crd.yaml renders that same file (TestHelmCRDManagedIsTheGeneratedOne).
func TestHelmCRDIsTheGeneratedOne(t *testing.T) {
	for _, file := range crdFiles {
		want := readRepoFile(t, "manifests", "crd", file)
		got := readRepoFile(t, ChartDir, "crds", file)
		if !bytes.Equal(got, want) {
			t.Errorf("%s/crds/%s differs from manifests/crd/%s (run make manifests)", ChartDir, file, file)
		}
	}
}

// crdFiles are the generated CRDs, in manifests/crd and the chart's crds/.
var crdFiles = []string{"magic-ip.dev_magicips.yaml", "magic-ip.dev_magicipnodes.yaml"}

// helmOnlyLabels are the labels the chart adds to the kustomize manifests' (in metadata,
// pod templates and selectors alike).
var helmOnlyLabels = []string{"app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"}

func dropHelmLabels(v any) {
	switch v := v.(type) {
	case map[string]any:
		for _, l := range helmOnlyLabels {
			delete(v, l)
		}
		for _, x := range v {
			dropHelmLabels(x)
		}
	case []any:
		for _, x := range v {
			dropHelmLabels(x)
		}
	}
}

// TestHelmDefaultsMatchKustomize: release magic-ip in magic-ip-system with default values renders
// the objects of `kubectl kustomize manifests/default` (but the Namespace), field for field, once
// the chart's extra labels are set aside.
func TestHelmDefaultsMatchKustomize(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	assets, err := AssetsDir(root)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(assets, "kubectl"), "kustomize", filepath.Join(root, "manifests", "default")).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize manifests/default: %v", err)
	}
	kobjs := helmObjects(t, out)
	hobjs := helmObjects(t, helmRender(t, "magic-ip", "magic-ip-system"))
	for _, o := range hobjs {
		dropHelmLabels(o)
	}
	h := helmByKey(hobjs)
	seen := map[string]bool{}
	for _, k := range kobjs {
		name := helmKey(k)
		if k["kind"] == "Namespace" {
			continue // helm install --create-namespace; the PSS labels are the operator's
		}
		seen[name] = true
		got, ok := h[name]
		if !ok {
			t.Errorf("the chart does not render %s", name)
			continue
		}
		if !reflect.DeepEqual(got, k) {
			g, _ := json.MarshalIndent(got, "", "  ")
			w, _ := json.MarshalIndent(k, "", "  ")
			t.Errorf("%s differs:\nhelm:\n%s\nkustomize:\n%s", name, g, w)
		}
	}
	for name := range h {
		if !seen[name] {
			t.Errorf("the chart renders %s, kustomize does not", name)
		}
	}
}

func helmDig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// helmAgentContainer renders the chart with set and returns the agent DaemonSet's pod spec and
// its container.
func helmAgentPod(t *testing.T, set ...string) (pod, container map[string]any) {
	t.Helper()
	ds := helmByKey(helmObjects(t, helmRender(t, "magic-ip", "mip", set...)))["DaemonSet/magic-ip-agent"]
	if ds == nil {
		t.Fatalf("--set %v: no DaemonSet magic-ip-agent", set)
	}
	pod = helmDig(ds, "spec", "template", "spec").(map[string]any)
	return pod, pod["containers"].([]any)[0].(map[string]any)
}

func helmEnv(c map[string]any, name string) any {
	for _, e := range c["env"].([]any) {
		if e := e.(map[string]any); e["name"] == name {
			return e["value"]
		}
	}
	return nil
}

func helmJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestHelmAgentNodeSelection: the agent always selects Linux nodes (merged with the user's
// nodeSelector) and by default stays off virtual nodes.
func TestHelmAgentNodeSelection(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{nil, `{"kubernetes.io/os":"linux"}`},
		{seedSet, `{"kubernetes.io/os":"linux"}`},
		{[]string{"agent.nodeSelector.pool=infra"}, `{"kubernetes.io/os":"linux","pool":"infra"}`},
	} {
		pod, _ := helmAgentPod(t, tc.set...)
		if got := helmJSON(pod["nodeSelector"]); got != tc.want {
			t.Errorf("--set %v: nodeSelector %s, want %s", tc.set, got, tc.want)
		}
	}
	pod, _ := helmAgentPod(t)
	want := `{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[` +
		`{"key":"type","operator":"NotIn","values":["virtual-kubelet"]},` +
		`{"key":"eks.amazonaws.com/compute-type","operator":"NotIn","values":["fargate"]}]}]}}}`
	if got := helmJSON(pod["affinity"]); got != want {
		t.Errorf("affinity %s, want %s", got, want)
	}
}

// TestHelmAgentListeners: /metrics and the probes bind loopback by default (the agent shares the
// node's network namespace), the probes follow the health address, and the metrics port is
// declared only when something off the node can reach it.
func TestHelmAgentListeners(t *testing.T) {
	probe := func(host string) string {
		h := ""
		if host != "" {
			h = `"host":"` + host + `",`
		}
		return `{"failureThreshold":3,"httpGet":{` + h + `"path":"/healthz","port":10272},"periodSeconds":10}`
	}
	for _, tc := range []struct {
		set                       []string
		metrics, health, liveness string
		ports                     string
	}{
		{nil, "127.0.0.1:10271", "127.0.0.1:10272", probe("127.0.0.1"), "null"},
		{seedSet, "127.0.0.1:10271", "127.0.0.1:10272", probe("127.0.0.1"), "null"},
		{[]string{"agent.metrics.bindAddress=$(NODE_IP):10271"}, "$(NODE_IP):10271", "127.0.0.1:10272", probe("127.0.0.1"),
			`[{"containerPort":10271,"name":"metrics","protocol":"TCP"}]`},
		{[]string{"agent.metrics.bindAddress=0.0.0.0:10271"}, "0.0.0.0:10271", "127.0.0.1:10272", probe("127.0.0.1"),
			`[{"containerPort":10271,"name":"metrics","protocol":"TCP"}]`},
		{[]string{"agent.metrics.bindAddress=0"}, "0", "127.0.0.1:10272", probe("127.0.0.1"), "null"},
		{[]string{"agent.health.bindAddress=:10272"}, "127.0.0.1:10271", ":10272", probe("127.0.0.1"), "null"},
		{[]string{"agent.health.bindAddress=$(NODE_IP):10272"}, "127.0.0.1:10271", "$(NODE_IP):10272", probe(""), "null"},
	} {
		_, c := helmAgentPod(t, tc.set...)
		if got := helmEnv(c, "MAGIC_IP_METRICS_BIND_ADDRESS"); got != tc.metrics {
			t.Errorf("--set %v: MAGIC_IP_METRICS_BIND_ADDRESS %v, want %s", tc.set, got, tc.metrics)
		}
		if got := helmEnv(c, "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS"); got != tc.health {
			t.Errorf("--set %v: MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS %v, want %s", tc.set, got, tc.health)
		}
		if got := helmJSON(c["livenessProbe"]); got != tc.liveness {
			t.Errorf("--set %v: livenessProbe %s, want %s", tc.set, got, tc.liveness)
		}
		if got := helmJSON(c["ports"]); got != tc.ports {
			t.Errorf("--set %v: ports %s, want %s", tc.set, got, tc.ports)
		}
	}
	for _, bad := range []struct{ set, want string }{
		{"agent.metricsPort=9402", "agent.metrics.bindAddress"},
		{"agent.healthPort=9403", "agent.health.bindAddress"},
		{"agent.metrics.bindAddress=10271", "want host:port"},
		{"agent.metrics.bindAddress=127.0.0.1:70000", "not 1-65535"},
		{"agent.health.bindAddress=0", "want host:port"},
	} {
		_, err := HelmTemplate("magic-ip", "mip", bad.set)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("--set %s: error %v, want one mentioning %q", bad.set, err, bad.want)
		}
	}
}

// TestHelmCRDManagedIsTheGeneratedOne: with crds.managed=true the chart renders the generated CRD as a template,
// field for field, plus the release's labels and helm.sh/resource-policy: keep (crds.keep).
func TestHelmCRDManagedIsTheGeneratedOne(t *testing.T) {
	for i, file := range crdFiles {
		checkManagedCRD(t, file, i)
	}
	for _, d := range helmDocs(helmRender(t, "mip", "obs")) {
		if strings.HasPrefix(d, "# Source: magic-ip/templates/crd.yaml") {
			t.Errorf("crds.managed=false renders templates/crd.yaml:\n%s", d)
		}
	}
}

// checkManagedCRD: the i-th CRD templates/crd.yaml renders is file, plus labels and policy.
func checkManagedCRD(t *testing.T, file string, i int) {
	t.Helper()
	want := helmObjects(t, readRepoFile(t, "manifests", "crd", file))[0]
	for _, keep := range []bool{true, false} {
		set := []string{"crds.managed=true", fmt.Sprintf("crds.keep=%t", keep)}
		var crds []helmObject
		for _, d := range helmDocs(helmRender(t, "mip", "obs", set...)) {
			if strings.HasPrefix(d, "# Source: magic-ip/templates/crd.yaml") {
				crds = append(crds, helmObjects(t, []byte(d))...)
			}
		}
		if len(crds) <= i {
			t.Fatalf("--set %v: templates/crd.yaml does not render %s", set, file)
		}
		got := crds[i]
		md := got["metadata"].(map[string]any)
		labels := md["labels"].(map[string]any)
		if labels["app.kubernetes.io/managed-by"] != "Helm" || labels["app.kubernetes.io/instance"] != "mip" {
			t.Errorf("--set %v: labels %v lack the release's", set, labels)
		}
		ann := md["annotations"].(map[string]any)
		if policy, _ := ann["helm.sh/resource-policy"].(string); (policy == "keep") != keep {
			t.Errorf("--set %v: helm.sh/resource-policy %q", set, policy)
		}
		delete(md, "labels")
		delete(ann, "helm.sh/resource-policy")
		if !reflect.DeepEqual(got, want) {
			t.Errorf("--set %v: the rendered CRD differs from manifests/crd/%s beyond labels and the resource policy", set, file)
		}
	}
}

// readRepoFile reads the file at path (elements joined) under the repository root.
func readRepoFile(t *testing.T, path ...string) []byte {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(append([]string{root}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHelmAgentDatapath: agent.datapath reaches the agent as MAGIC_IP_DATAPATH (auto by default,
// as kustomize's), and a value the agent would refuse fails the rendering instead of a crash-looping
// DaemonSet.
func TestHelmAgentDatapath(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{nil, "auto"},
		{seedSet, "auto"},
		{[]string{"agent.datapath=iptables"}, "iptables"},
		{[]string{"agent.datapath=nftables"}, "nftables"},
	} {
		_, c := helmAgentPod(t, tc.set...)
		if got := helmEnv(c, "MAGIC_IP_DATAPATH"); got != tc.want {
			t.Errorf("--set %v: MAGIC_IP_DATAPATH %v, want %s", tc.set, got, tc.want)
		}
	}
	for _, bad := range []string{"agent.datapath=nft", "agent.datapath=", "agent.datapath=IPTABLES"} {
		_, err := HelmTemplate("magic-ip", "mip", bad)
		if err == nil || !strings.Contains(err.Error(), "want auto, iptables or nftables") {
			t.Errorf("--set %s: error %v, want one naming auto, iptables or nftables", bad, err)
		}
	}
}
