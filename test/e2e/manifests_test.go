package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// rendering is one way users install magic-ip: the objects it renders and the namespace they land in.
type rendering struct {
	name, namespace string
	render          func(cp *harness.ControlPlane) ([]*unstructured.Unstructured, error)
}

func helmRendering(name, release, namespace string, set ...string) rendering {
	return rendering{name: name, namespace: namespace, render: func(*harness.ControlPlane) ([]*unstructured.Unstructured, error) {
		b, err := harness.HelmTemplate(release, namespace, set...)
		if err != nil {
			return nil, err
		}
		return harness.DecodeObjects(b)
	}}
}

// seedSet are the values of the seed chart's one-liner.
var seedSet = []string{"config.ipAddress=169.254.210.210", "config.port=9200", "config.selector=app=apm-server"}

var renderings = []rendering{
	{name: "kustomize manifests/default", namespace: harness.WebhookNamespace, render: func(cp *harness.ControlPlane) ([]*unstructured.Unstructured, error) {
		return cp.Kustomize("default")
	}},
	helmRendering("helm defaults", "magic-ip", harness.WebhookNamespace),
	// The seed chart's one-liner (kube-magic-ip-address), in the seed's kube-system namespace.
	helmRendering("helm seed-style values", "169-254-210-210", "kube-system", seedSet...),
	helmRendering("helm without cert-manager", "magic-ip", harness.WebhookNamespace, "certManager.enabled=false"),
}

// TestManifestsValid renders every install path and applies each object to the real API server
// with server-side dry-run (schema, CEL, defaulting, admission), after installing cert-manager's
// CRDs; then checks the rendered objects against our deployment policies.
func TestManifestsValid(t *testing.T) {
	cp := harness.StartControlPlane(t)
	harness.InstallCertManagerCRDs(t, cp)
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			objs, err := r.render(cp)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatal("rendered nothing")
			}
			if err := cp.Apply(t.Context(), objs, true); err != nil {
				t.Errorf("server-side dry-run:\n%v", err)
			}
			set, err := decodeSet(objs)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range set.check(r.namespace) {
				t.Error(err)
			}
		})
	}
}

// TestManifestsAgentPlacement runs the real DaemonSet controller (kube-controller-manager) over
// nodes labelled and tainted as their platforms do, and checks where each install path's agent
// DaemonSet puts its pods: on every Linux node whatever its taints, on no Windows or virtual node.
func TestManifestsAgentPlacement(t *testing.T) {
	cp := harness.StartControlPlane(t)
	harness.StartControllerManager(t, cp, "daemonset-controller")
	noSchedule := func(key, value string) corev1.Taint {
		return corev1.Taint{Key: key, Value: value, Effect: corev1.TaintEffectNoSchedule}
	}
	nodes := []*corev1.Node{
		placementNode("linux-a", map[string]string{"kubernetes.io/os": "linux"}),
		placementNode("linux-infra", map[string]string{"kubernetes.io/os": "linux", "pool": "infra"}, noSchedule("dedicated", "infra")),
		placementNode("windows-a", map[string]string{"kubernetes.io/os": "windows"}, noSchedule("os", "windows")),
		// An AKS virtual node (virtual-kubelet, pods run in Azure Container Instances).
		placementNode("virtual-node-aci-linux", map[string]string{"kubernetes.io/os": "linux", "type": "virtual-kubelet", "kubernetes.io/role": "agent"},
			noSchedule("virtual-kubelet.io/provider", "azure")),
		// An EKS Fargate node (one per pod, run by AWS).
		placementNode("fargate-ip-10-0-1-2.ec2.internal", map[string]string{"kubernetes.io/os": "linux", "eks.amazonaws.com/compute-type": "fargate"},
			noSchedule("eks.amazonaws.com/compute-type", "fargate")),
	}
	for _, n := range nodes {
		if err := cp.Client.Create(t.Context(), n); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		r    rendering
		want []string
	}{
		{renderings[0], []string{"linux-a", "linux-infra"}},
		{helmRendering("helm defaults", "mip", "placement"), []string{"linux-a", "linux-infra"}},
		{helmRendering("helm agent.nodeSelector", "pool", "placement-pool", "agent.nodeSelector.pool=infra"), []string{"linux-infra"}},
	}
	for _, tc := range cases {
		t.Run(tc.r.name, func(t *testing.T) {
			objs, err := tc.r.render(cp)
			if err != nil {
				t.Fatal(err)
			}
			ds := applyAgent(t, cp, tc.r.namespace, objs)
			// Polled every 100 ms (the client's rate limiter would take a faster poll's last
			// error); the last error the controller's state gave is the one reported.
			var last error
			err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				if err := agentPodsOn(ctx, cp, ds, tc.want); ctx.Err() == nil {
					last = err
				}
				return last == nil, nil
			})
			if err != nil {
				t.Fatalf("agent pods on %v: not within 30s: %v", tc.want, last)
			}
		})
	}
}

func placementNode(name string, labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	labels["kubernetes.io/hostname"] = name
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.NodeSpec{Taints: taints}}
}

// applyAgent applies the namespace, the agent's ServiceAccount and DaemonSet from objs, and returns
// the DaemonSet's key.
func applyAgent(t *testing.T, cp *harness.ControlPlane, namespace string, objs []*unstructured.Unstructured) client.ObjectKey {
	t.Helper()
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": namespace}}}
	keep := []*unstructured.Unstructured{ns}
	var key client.ObjectKey
	for _, o := range objs {
		if component(o.GetLabels()) != "agent" || (o.GetKind() != "DaemonSet" && o.GetKind() != "ServiceAccount") {
			continue
		}
		keep = append(keep, o)
		if o.GetKind() == "DaemonSet" {
			key = client.ObjectKey{Namespace: o.GetNamespace(), Name: o.GetName()}
		}
	}
	if key.Name == "" {
		t.Fatal("no agent DaemonSet rendered")
	}
	if err := cp.Apply(t.Context(), keep, false); err != nil {
		t.Fatal(err)
	}
	return key
}

// agentPodsOn: the DaemonSet controller has seen the DaemonSet, wants exactly the nodes want, and
// has created a pod for each of them (a DaemonSet pod names its node in a required node affinity
// on metadata.name).
func agentPodsOn(ctx context.Context, cp *harness.ControlPlane, key client.ObjectKey, want []string) error {
	ds := &appsv1.DaemonSet{}
	if err := cp.Client.Get(ctx, key, ds); err != nil {
		return err
	}
	if ds.Status.ObservedGeneration < ds.Generation {
		return fmt.Errorf("DaemonSet %s not yet synced", key)
	}
	pods := &corev1.PodList{}
	if err := cp.Client.List(ctx, pods, client.InNamespace(key.Namespace), client.MatchingLabels(ds.Spec.Selector.MatchLabels)); err != nil {
		return err
	}
	var on []string
	for _, p := range pods.Items {
		a := p.Spec.Affinity
		if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			return fmt.Errorf("pod %s has no required node affinity naming its node", p.Name)
		}
		for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range term.MatchFields {
				on = append(on, f.Values...)
			}
		}
	}
	slices.Sort(on)
	if int(ds.Status.DesiredNumberScheduled) != len(want) || !slices.Equal(on, want) {
		return fmt.Errorf("DaemonSet %s wants %d nodes and has pods for %v; want pods for %v", key, ds.Status.DesiredNumberScheduled, on, want)
	}
	return nil
}

// TestManifestsHelmMatchesKustomize: the chart's RBAC rules equal the kustomize ones, which the
// e2e tests prove sufficient (the harness runs the agent and webhook under them).
func TestManifestsHelmMatchesKustomize(t *testing.T) {
	cp := harness.StartControlPlane(t)
	sets := map[string]*objectSet{}
	for _, r := range renderings[:2] {
		objs, err := r.render(cp)
		if err != nil {
			t.Fatal(err)
		}
		if sets[r.name], err = decodeSet(objs); err != nil {
			t.Fatal(err)
		}
	}
	k, h := sets[renderings[0].name], sets[renderings[1].name]
	for _, component := range []string{"agent", "webhook"} {
		if got, want := h.clusterRules(component), k.clusterRules(component); !slices.EqualFunc(got, want, ruleEqual) {
			t.Errorf("%s ClusterRole rules: helm %v, kustomize %v", component, got, want)
		}
	}
}

// TestManifestsRBACNotMore asks the API server (SubjectAccessReview) what the shipped service
// accounts may do: what they need is allowed, everything sensitive next to it is not.
func TestManifestsRBACNotMore(t *testing.T) {
	cp := harness.StartControlPlane(t)
	type access struct {
		verb, group, resource, subresource, namespace string
	}
	cases := map[string]struct {
		allowed, denied []access
	}{
		harness.AgentServiceAccount: {
			allowed: []access{
				{verb: "watch", resource: "pods"}, {verb: "list", group: "magic-ip.dev", resource: "magicips"}, {verb: "create", group: "events.k8s.io", resource: "events", namespace: "default"}, {verb: "get", resource: "nodes"},
				// Node gating: the magic-ip.dev/Programmed condition, and removing the startup taint.
				{verb: "patch", resource: "nodes", subresource: "status"}, {verb: "patch", resource: "nodes"},
				// Its per-node record.
				{verb: "create", group: "magic-ip.dev", resource: "magicipnodes"}, {verb: "update", group: "magic-ip.dev", resource: "magicipnodes"},
			},
			denied: []access{
				{verb: "get", resource: "secrets", namespace: "default"}, {verb: "list", resource: "secrets"},
				{verb: "update", group: "magic-ip.dev", resource: "magicips"}, {verb: "update", group: "magic-ip.dev", resource: "magicips", subresource: "status"},
				{verb: "create", resource: "pods", namespace: "default"}, {verb: "delete", resource: "pods", namespace: "default"},
				{verb: "list", resource: "nodes"}, {verb: "watch", resource: "nodes"}, {verb: "list", resource: "configmaps"},
				{verb: "update", resource: "nodes"}, {verb: "update", resource: "nodes", subresource: "status"}, {verb: "delete", resource: "nodes"},
				{verb: "create", resource: "nodes"}, {verb: "get", resource: "nodes", subresource: "proxy"},
				{verb: "delete", group: "magic-ip.dev", resource: "magicipnodes"}, {verb: "list", group: "magic-ip.dev", resource: "magicipnodes"},
			},
		},
		harness.WebhookServiceAccount: {
			allowed: []access{
				{verb: "watch", group: "magic-ip.dev", resource: "magicips"}, {verb: "update", group: "magic-ip.dev", resource: "magicips", subresource: "status"},
				{verb: "watch", group: "magic-ip.dev", resource: "magicipnodes"},
				{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: harness.WebhookNamespace},
			},
			denied: []access{
				{verb: "get", resource: "secrets", namespace: harness.WebhookNamespace}, {verb: "list", resource: "pods"},
				{verb: "update", group: "magic-ip.dev", resource: "magicips"}, {verb: "delete", group: "magic-ip.dev", resource: "magicips"},
				{verb: "update", group: "magic-ip.dev", resource: "magicipnodes"},
				{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system"},
				{verb: "update", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations"},
			},
		},
	}
	for sa, tc := range cases {
		for _, want := range []bool{true, false} {
			list := tc.denied
			if want {
				list = tc.allowed
			}
			for _, a := range list {
				sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
					User:   harness.ServiceAccountUser(harness.WebhookNamespace, sa),
					Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + harness.WebhookNamespace, "system:authenticated"},
					ResourceAttributes: &authorizationv1.ResourceAttributes{
						Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace,
					},
				}}
				if err := cp.Client.Create(t.Context(), sar); err != nil {
					t.Fatal(err)
				}
				if sar.Status.Allowed != want {
					t.Errorf("%s %s %+v: allowed=%v, want %v", sa, a.verb, a, sar.Status.Allowed, want)
				}
			}
		}
	}
}

// TestManifestPoliciesCatchViolations breaks the rendered kustomize objects one way at a time and
// expects the policy checks to notice each, so a green TestManifestsValid means something.
func TestManifestPoliciesCatchViolations(t *testing.T) {
	cp := harness.StartControlPlane(t)
	objs, err := cp.Kustomize("default")
	if err != nil {
		t.Fatal(err)
	}
	good, err := decodeSet(objs)
	if err != nil {
		t.Fatal(err)
	}
	if errs := good.check(harness.WebhookNamespace); len(errs) > 0 {
		t.Fatalf("shipped manifests fail the policies: %v", errs)
	}
	cases := map[string]struct {
		mutate func(s *objectSet)
		want   string
	}{
		"agent privileged": {func(s *objectSet) {
			s.agent().Spec.Template.Spec.Containers[0].SecurityContext.Privileged = ptrTo(true)
		}, "privileged"},
		"agent extra capability": {func(s *objectSet) {
			c := s.agent().Spec.Template.Spec.Containers[0].SecurityContext.Capabilities
			c.Add = append(c.Add, "SYS_ADMIN")
		}, "SYS_ADMIN"},
		"no readiness probe": {func(s *objectSet) { s.webhook().Spec.Template.Spec.Containers[0].ReadinessProbe = nil }, "readinessProbe"},
		"no requests":        {func(s *objectSet) { s.agent().Spec.Template.Spec.Containers[0].Resources.Requests = nil }, "requests"},
		"writable root fs": {func(s *objectSet) {
			s.webhook().Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = ptrTo(false)
		}, "readOnlyRootFilesystem"},
		"webhook may run as root": {func(s *objectSet) { s.webhook().Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil }, "runAsNonRoot"},
		"wildcard verb":           {func(s *objectSet) { s.clusterRoles[0].Rules[0].Verbs = []string{"*"} }, "wildcard"},
		"secrets access": {func(s *objectSet) {
			s.clusterRoles[0].Rules[0].Resources = append(s.clusterRoles[0].Rules[0].Resources, "secrets")
		}, "secrets"},
		"failurePolicy Fail":       {func(s *objectSet) { s.mwc.Webhooks[0].FailurePolicy = ptrTo(admissionregistrationv1.Fail) }, "failurePolicy"},
		"kube-system not excluded": {func(s *objectSet) { s.mwc.Webhooks[0].NamespaceSelector.MatchExpressions = nil }, "kube-system"},
		"no opt-out":               {func(s *objectSet) { s.mwc.Webhooks[0].ObjectSelector = nil }, "objectSelector"},
		"no CA injection":          {func(s *objectSet) { s.mwc.Annotations = nil }, "inject-ca-from"},
		"agent misses a taint":     {func(s *objectSet) { s.agent().Spec.Template.Spec.Tolerations = nil }, "tolerat"},
		"no PodDisruptionBudget":   {func(s *objectSet) { s.pdbs = nil }, "PodDisruptionBudget"},
		"one webhook replica":      {func(s *objectSet) { s.webhook().Spec.Replicas = ptrTo[int32](1) }, "replicas"},
		"certificate misses a name": {func(s *objectSet) {
			for _, c := range s.certificates {
				_ = unstructured.SetNestedStringSlice(c.Object, []string{"localhost"}, "spec", "dnsNames")
			}
		}, "dnsNames"},
		"no xtables lock":        {func(s *objectSet) { s.agent().Spec.Template.Spec.Containers[0].VolumeMounts = nil }, "xtables"},
		"agent on Windows nodes": {func(s *objectSet) { s.agent().Spec.Template.Spec.NodeSelector = nil }, "kubernetes.io/os"},
		"agent on virtual nodes": {func(s *objectSet) { s.agent().Spec.Template.Spec.Affinity = nil }, "virtual nodes"},
		"metrics on every address": {func(s *objectSet) {
			setAgentEnv(s, "MAGIC_IP_METRICS_BIND_ADDRESS", ":10271")
		}, "does not bind loopback"},
		"health on cert-manager's port": {func(s *objectSet) {
			setAgentEnv(s, "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:9402")
		}, "cert-manager"},
		"probe on the pod IP": {func(s *objectSet) {
			s.agent().Spec.Template.Spec.Containers[0].LivenessProbe.HTTPGet.Host = ""
		}, "livenessProbe"},
		"agent declares a host port": {func(s *objectSet) {
			s.agent().Spec.Template.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: 10271}}
		}, "declares ports"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := decodeSet(objs)
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(s)
			errs := s.check(harness.WebhookNamespace)
			if !slices.ContainsFunc(errs, func(e error) bool { return strings.Contains(e.Error(), tc.want) }) {
				t.Errorf("policies did not notice (want an error mentioning %q), got %v", tc.want, errs)
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

func setAgentEnv(s *objectSet, name, value string) {
	c := &s.agent().Spec.Template.Spec.Containers[0]
	for i := range c.Env {
		if c.Env[i].Name == name {
			c.Env[i].Value = value
		}
	}
}

type metaRequirement = metav1.LabelSelectorRequirement

// objectSet is a rendering decoded into the typed objects the policies look at.
type objectSet struct {
	daemonSets   []*appsv1.DaemonSet
	deployments  []*appsv1.Deployment
	services     []*corev1.Service
	pdbs         []*policyv1.PodDisruptionBudget
	clusterRoles []*rbacv1.ClusterRole
	roles        []*rbacv1.Role
	mwc          *admissionregistrationv1.MutatingWebhookConfiguration
	certificates []*unstructured.Unstructured
	secrets      []*corev1.Secret
}

func decodeSet(objs []*unstructured.Unstructured) (*objectSet, error) {
	s := &objectSet{}
	for _, o := range objs {
		var target any
		switch o.GetKind() {
		case "DaemonSet":
			target = appendNew(&s.daemonSets)
		case "Deployment":
			target = appendNew(&s.deployments)
		case "Service":
			target = appendNew(&s.services)
		case "PodDisruptionBudget":
			target = appendNew(&s.pdbs)
		case "ClusterRole":
			target = appendNew(&s.clusterRoles)
		case "Role":
			target = appendNew(&s.roles)
		case "Secret":
			target = appendNew(&s.secrets)
		case "MutatingWebhookConfiguration":
			if s.mwc != nil {
				return nil, errors.New("two MutatingWebhookConfigurations")
			}
			s.mwc = &admissionregistrationv1.MutatingWebhookConfiguration{}
			target = s.mwc
		case "Certificate":
			s.certificates = append(s.certificates, o)
			continue
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, target, true); err != nil {
			return nil, fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return s, nil
}

func appendNew[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

func component(m map[string]string) string { return m["app.kubernetes.io/component"] }

func (s *objectSet) agent() *appsv1.DaemonSet {
	for _, d := range s.daemonSets {
		if component(d.Labels) == "agent" {
			return d
		}
	}
	return nil
}

func (s *objectSet) webhook() *appsv1.Deployment {
	for _, d := range s.deployments {
		if component(d.Labels) == "webhook" {
			return d
		}
	}
	return nil
}

func (s *objectSet) clusterRules(comp string) []rbacv1.PolicyRule {
	var rules []rbacv1.PolicyRule
	for _, r := range s.clusterRoles {
		if component(r.Labels) == comp {
			rules = append(rules, r.Rules...)
		}
	}
	return rules
}

func ruleEqual(a, b rbacv1.PolicyRule) bool {
	return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) &&
		slices.Equal(a.Verbs, b.Verbs) && slices.Equal(a.ResourceNames, b.ResourceNames)
}

// check returns every policy violation: what an operator reviewing the install would reject.
func (s *objectSet) check(namespace string) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, d := range s.daemonSets {
		checkPod(fail, "DaemonSet "+d.Name, &d.Spec.Template.Spec)
	}
	for _, d := range s.deployments {
		checkPod(fail, "Deployment "+d.Name, &d.Spec.Template.Spec)
	}
	if a := s.agent(); a == nil {
		fail("no agent DaemonSet")
	} else {
		checkAgent(fail, a)
	}
	if w := s.webhook(); w == nil {
		fail("no webhook Deployment")
	} else {
		s.checkWebhook(fail, w)
	}
	s.checkRBAC(fail)
	s.checkWebhookConfiguration(fail, namespace)
	return errs
}

// checkPod: requests, probes and a locked-down securityContext on every container.
func checkPod(fail func(string, ...any), what string, p *corev1.PodSpec) {
	if p.SecurityContext == nil || p.SecurityContext.SeccompProfile == nil || p.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		fail("%s: pod seccompProfile is not RuntimeDefault", what)
	}
	for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
		where := what + " container " + c.Name
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			fail("%s: no cpu and memory requests", where)
		}
		if c.Resources.Limits.Memory().IsZero() {
			fail("%s: no memory limit", where)
		}
		if c.LivenessProbe == nil {
			fail("%s: no livenessProbe", where)
		}
		if c.ReadinessProbe == nil {
			fail("%s: no readinessProbe", where)
		}
		sc := c.SecurityContext
		if sc == nil {
			fail("%s: no securityContext", where)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			fail("%s: privileged", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			fail("%s: allowPrivilegeEscalation not false", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			fail("%s: readOnlyRootFilesystem not true", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			fail("%s: capabilities do not drop ALL", where)
		}
		if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
			fail("%s: image %q has no pinned tag", where, c.Image)
		}
	}
}

func checkAgent(fail func(string, ...any), d *appsv1.DaemonSet) {
	p := &d.Spec.Template.Spec
	if !p.HostNetwork {
		fail("agent: not hostNetwork")
	}
	if p.PriorityClassName != "system-node-critical" {
		fail("agent: priorityClassName %q, want system-node-critical", p.PriorityClassName)
	}
	if !slices.ContainsFunc(p.Tolerations, func(t corev1.Toleration) bool {
		return t.Key == "" && t.Operator == corev1.TolerationOpExists && t.Effect == ""
	}) {
		fail("agent: does not tolerate every taint (want a toleration with operator Exists and no key)")
	}
	checkAgentPlacement(fail, p)
	if u := d.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		fail("agent: updateStrategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	for _, c := range p.Containers {
		if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil {
			for _, capability := range sc.Capabilities.Add {
				if capability != "NET_ADMIN" && capability != "NET_RAW" {
					fail("agent: capability %s added (only NET_ADMIN and NET_RAW are needed)", capability)
				}
			}
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/run/xtables.lock" }) {
			fail("agent: /run/xtables.lock not mounted (iptables would not share the node's xtables lock)")
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			fail("agent: NODE_NAME not from the downward API spec.nodeName")
		}
		checkAgentListeners(fail, &c)
	}
}

// checkAgentPlacement: the agent tolerates every taint, so only its node selector and affinity
// keep it off nodes where it cannot run (Windows, virtual nodes).
func checkAgentPlacement(fail func(string, ...any), p *corev1.PodSpec) {
	if p.NodeSelector["kubernetes.io/os"] != "linux" {
		fail("agent: nodeSelector %v lacks kubernetes.io/os: linux (Windows nodes would get an agent that cannot start)", p.NodeSelector)
	}
	excluded := func(t corev1.NodeSelectorTerm) bool {
		return slices.ContainsFunc(t.MatchExpressions, func(r corev1.NodeSelectorRequirement) bool {
			return r.Key == "type" && r.Operator == corev1.NodeSelectorOpNotIn && slices.Contains(r.Values, "virtual-kubelet")
		})
	}
	a := p.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil ||
		!allTerms(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms, excluded) {
		fail("agent: required node affinity does not exclude virtual nodes (type NotIn [virtual-kubelet] in every term)")
	}
}

func allTerms(terms []corev1.NodeSelectorTerm, f func(corev1.NodeSelectorTerm) bool) bool {
	return len(terms) > 0 && !slices.ContainsFunc(terms, func(t corev1.NodeSelectorTerm) bool { return !f(t) })
}

// nodeAgentPorts are ports that other node agents commonly hold on the host network.
var nodeAgentPorts = map[string]string{
	"9091": "Calico Felix metrics", "9099": "Calico Felix health", "9100": "node-exporter",
	"9402": "cert-manager metrics", "9879": "Cilium agent health", "9962": "Cilium agent metrics",
	"10248": "kubelet healthz", "10249": "kube-proxy metrics", "10250": "kubelet", "10256": "kube-proxy health",
}

// checkAgentListeners: on the host network the agent's listeners are the node's, so by default
// they bind loopback only, on ports other node agents do not use, and the kubelet probes them
// on 127.0.0.1 (it runs in the node's network namespace); no port is declared, as none is reachable.
func checkAgentListeners(fail func(string, ...any), c *corev1.Container) {
	healthPort := ""
	for _, name := range []string{"MAGIC_IP_METRICS_BIND_ADDRESS", "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS"} {
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
		if i < 0 {
			fail("agent: %s not set (the binary's default would decide what the node exposes)", name)
			continue
		}
		host, port, err := net.SplitHostPort(c.Env[i].Value)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			fail("agent: %s=%q does not bind loopback: reachable from off the node", name, c.Env[i].Value)
		}
		if other, ok := nodeAgentPorts[port]; ok {
			fail("agent: %s=%q takes port %s (%s)", name, c.Env[i].Value, port, other)
		}
		healthPort = port
	}
	for what, pr := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Host != "127.0.0.1" || pr.HTTPGet.Port.String() != healthPort {
			fail("agent: %s is not an httpGet of 127.0.0.1:%s, where the health endpoint listens", what, healthPort)
		}
	}
	if len(c.Ports) > 0 {
		fail("agent: declares ports %v, which on the host network reserve host ports for loopback listeners", c.Ports)
	}
}

func (s *objectSet) checkWebhook(fail func(string, ...any), d *appsv1.Deployment) {
	p := &d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		fail("webhook: fewer than 2 replicas")
	}
	if p.SecurityContext == nil || p.SecurityContext.RunAsNonRoot == nil || !*p.SecurityContext.RunAsNonRoot {
		fail("webhook: pod runAsNonRoot not true")
	}
	if len(p.TopologySpreadConstraints) == 0 && (p.Affinity == nil || p.Affinity.PodAntiAffinity == nil) {
		fail("webhook: replicas not spread across nodes")
	}
	if !slices.ContainsFunc(s.pdbs, func(b *policyv1.PodDisruptionBudget) bool {
		return b.Spec.Selector != nil && selects(b.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}) {
		fail("webhook: no PodDisruptionBudget selects its pods")
	}
	if !slices.ContainsFunc(s.services, func(svc *corev1.Service) bool { return selects(svc.Spec.Selector, d.Spec.Template.Labels) }) {
		fail("webhook: no Service selects its pods")
	}
	// The serving certificate's Secret is what the webhook mounts.
	var mounted []string
	for _, v := range p.Volumes {
		if v.Secret != nil {
			mounted = append(mounted, v.Secret.SecretName)
		}
	}
	issued := slices.ContainsFunc(s.certificates, func(c *unstructured.Unstructured) bool {
		name, _, _ := unstructured.NestedString(c.Object, "spec", "secretName")
		return slices.Contains(mounted, name)
	}) || slices.ContainsFunc(s.secrets, func(sec *corev1.Secret) bool { return slices.Contains(mounted, sec.Name) })
	if !issued {
		fail("webhook: mounts Secrets %v that no Certificate (or rendered Secret) provides", mounted)
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (s *objectSet) checkRBAC(fail func(string, ...any)) {
	var rules []rbacv1.PolicyRule
	for _, r := range s.clusterRoles {
		rules = append(rules, r.Rules...)
	}
	for _, r := range s.roles {
		rules = append(rules, r.Rules...)
	}
	if len(rules) == 0 {
		fail("no RBAC rules rendered")
	}
	for _, r := range rules {
		if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
			fail("RBAC rule %v uses a wildcard", r)
		}
		if slices.Contains(r.Resources, "secrets") {
			fail("RBAC rule %v grants access to secrets", r)
		}
		if len(r.NonResourceURLs) > 0 {
			fail("RBAC rule %v grants non-resource URLs", r)
		}
	}
}

func (s *objectSet) checkWebhookConfiguration(fail func(string, ...any), namespace string) {
	if s.mwc == nil {
		fail("no MutatingWebhookConfiguration")
		return
	}
	certManaged := len(s.certificates) > 0
	if ann := s.mwc.Annotations["cert-manager.io/inject-ca-from"]; certManaged {
		ns, name, _ := strings.Cut(ann, "/")
		i := slices.IndexFunc(s.certificates, func(c *unstructured.Unstructured) bool { return c.GetName() == name })
		if ns != namespace || i < 0 {
			fail("MutatingWebhookConfiguration: cert-manager.io/inject-ca-from %q names no rendered Certificate in %s", ann, namespace)
		} else if w := s.mwc.Webhooks; len(w) > 0 && w[0].ClientConfig.Service != nil {
			dns, _, _ := unstructured.NestedStringSlice(s.certificates[i].Object, "spec", "dnsNames")
			base := w[0].ClientConfig.Service.Name + "." + namespace + ".svc"
			if !slices.Contains(dns, base) || !slices.Contains(dns, base+".cluster.local") {
				fail("Certificate %s: dnsNames %v, want %s and %s.cluster.local", name, dns, base, base)
			}
		}
	}
	for _, w := range s.mwc.Webhooks {
		where := "webhook " + w.Name
		if !certManaged && len(w.ClientConfig.CABundle) == 0 {
			fail("%s: no caBundle and no cert-manager.io/inject-ca-from annotation", where)
		}
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
			fail("%s: failurePolicy not Ignore", where)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
			fail("%s: sideEffects not None", where)
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds != 2 {
			fail("%s: timeoutSeconds not 2", where)
		}
		if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
			fail("%s: reinvocationPolicy not IfNeeded", where)
		}
		if sel := w.NamespaceSelector; sel == nil || sel.MatchLabels["magic-ip.dev/inject"] != "enabled" {
			fail("%s: namespaceSelector does not require magic-ip.dev/inject=enabled", where)
		} else {
			for _, never := range []string{namespace, "kube-system"} {
				if !slices.ContainsFunc(sel.MatchExpressions, func(e metaRequirement) bool {
					return e.Key == "kubernetes.io/metadata.name" && e.Operator == "NotIn" && slices.Contains(e.Values, never)
				}) {
					fail("%s: namespaceSelector does not exclude %s", where, never)
				}
			}
		}
		if sel := w.ObjectSelector; sel == nil || !slices.ContainsFunc(sel.MatchExpressions, func(e metaRequirement) bool {
			return e.Key == "magic-ip.dev/inject" && e.Operator == "NotIn" && slices.Contains(e.Values, "disabled")
		}) {
			fail("%s: objectSelector does not exclude pods labelled magic-ip.dev/inject=disabled", where)
		}
		if svc := w.ClientConfig.Service; svc == nil || svc.Namespace != namespace || !slices.ContainsFunc(s.services, func(x *corev1.Service) bool { return x.Name == svc.Name }) {
			fail("%s: clientConfig.service %+v is not a rendered Service in %s", where, svc, namespace)
		}
	}
}

// The CRD upgrade paths (README.md, Upgrade), each with a real `helm` against the real API server.
// The "old" chart is this chart with a CRD that lacks the Ports printer column and the
// status.portSummary field, as a chart release before them would have shipped.

const crdName = "magicips.magic-ip.dev"

// TestHelmCRDUpgradeDocumentedStep: with the CRD in crds/ (the default), a first install creates
// MagicIPs in the same release; an upgrade over the old CRD stops with the command to run, and
// after that command the upgrade goes through on the new CRD, the MagicIP untouched.
func TestHelmCRDUpgradeDocumentedStep(t *testing.T) {
	cp := crdlessControlPlane(t)
	old := oldChart(t)
	values := append([]string{"--set", "certManager.enabled=false"}, setArgs(seedSet)...)
	helmOK(t, cp, append([]string{"install", "mip", old, "-n", "obs", "--create-namespace"}, values...)...)
	if cols := crdColumns(t, cp); slices.Contains(cols, "Ports") {
		t.Fatalf("old chart installed a CRD with the Ports column: %v", cols)
	}
	mip := magicIPUID(t, cp, "169-254-210-210")

	upgrade := append([]string{"upgrade", "mip", chartPath(t), "-n", "obs"}, values...)
	out, err := helmCmd(cp, upgrade...)
	if err == nil {
		t.Fatalf("helm upgrade over the old CRD succeeded (stored columns %v): the new chart now runs over a schema that prunes its fields\n%s", crdColumns(t, cp), out)
	}
	step := "kubectl apply --server-side --force-conflicts -f"
	if !strings.Contains(err.Error(), step) {
		t.Fatalf("helm upgrade over the old CRD failed without naming the step %q: %v", step, err)
	}
	if _, err := cp.Kubectl("apply", "--server-side", "--force-conflicts", "-f", filepath.Join(chartPath(t), "crds", "magic-ip.dev_magicips.yaml")); err != nil {
		t.Fatal(err)
	}
	helmOK(t, cp, upgrade...)
	if cols := crdColumns(t, cp); !slices.Contains(cols, "Ports") {
		t.Errorf("after the documented step and helm upgrade the CRD has columns %v, want Ports among them", cols)
	}
	if got := magicIPUID(t, cp, "169-254-210-210"); got != mip {
		t.Errorf("MagicIP 169-254-210-210 was recreated (uid %s, was %s)", got, mip)
	}
}

// TestHelmCRDUpgradeManaged: with crds.managed=true the CRD is a release object: helm upgrade changes it,
// MagicIPs can come with the upgrade after the install, and helm uninstall keeps the CRD.
func TestHelmCRDUpgradeManaged(t *testing.T) {
	cp := crdlessControlPlane(t)
	managed := []string{"-n", "obs", "--set", "certManager.enabled=false", "--set", "crds.managed=true"}
	install := append([]string{"install", "mip", oldChart(t), "--create-namespace", "--skip-crds"}, managed...)
	// Why this is not the default: the release that installs a templated CRD cannot also create
	// MagicIPs (Helm maps every object's kind before it creates any).
	if out, err := helmCmd(cp, append(install, setArgs(seedSet)...)...); err == nil || !strings.Contains(err.Error(), `no matches for kind "MagicIP"`) {
		t.Errorf("helm install with crds.managed=true and a MagicIP: %v, want Helm's 'no matches for kind' error\n%s", err, out)
	}
	helmOK(t, cp, install...)
	crd := storedCRD(t, cp)
	if crd.GetLabels()["app.kubernetes.io/managed-by"] != "Helm" || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("managed CRD labels %v annotations %v: want managed-by Helm and resource-policy keep", crd.GetLabels(), crd.GetAnnotations())
	}
	helmOK(t, cp, append(append([]string{"upgrade", "mip", chartPath(t)}, managed...), setArgs(seedSet)...)...)
	if cols := crdColumns(t, cp); !slices.Contains(cols, "Ports") {
		t.Errorf("after helm upgrade the managed CRD has columns %v, want Ports among them", cols)
	}
	magicIPUID(t, cp, "169-254-210-210")
	helmOK(t, cp, "uninstall", "mip", "-n", "obs")
	storedCRD(t, cp)
}

// TestHelmCRDUpgradeAdoption: a release installed with the CRD in crds/ moves to crds.managed=true with
// --take-ownership (without it Helm refuses), and that upgrade updates the CRD in place.
func TestHelmCRDUpgradeAdoption(t *testing.T) {
	cp := crdlessControlPlane(t)
	values := append([]string{"-n", "obs", "--set", "certManager.enabled=false"}, setArgs(seedSet)...)
	helmOK(t, cp, append([]string{"install", "mip", oldChart(t), "--create-namespace"}, values...)...)
	mip := magicIPUID(t, cp, "169-254-210-210")
	upgrade := append([]string{"upgrade", "mip", chartPath(t), "--set", "crds.managed=true"}, values...)
	if out, err := helmCmd(cp, upgrade...); err == nil || !strings.Contains(err.Error(), "invalid ownership metadata") {
		t.Errorf("helm upgrade --set crds.managed=true without --take-ownership: %v, want Helm's ownership error\n%s", err, out)
	}
	helmOK(t, cp, append(upgrade, "--take-ownership")...)
	crd := storedCRD(t, cp)
	if got := crd.GetAnnotations()["meta.helm.sh/release-name"]; got != "mip" {
		t.Errorf("CRD annotation meta.helm.sh/release-name %q, want mip", got)
	}
	if cols := crdColumns(t, cp); !slices.Contains(cols, "Ports") {
		t.Errorf("after adoption the CRD has columns %v, want Ports among them", cols)
	}
	if got := magicIPUID(t, cp, "169-254-210-210"); got != mip {
		t.Errorf("MagicIP 169-254-210-210 was recreated (uid %s, was %s)", got, mip)
	}
}

func setArgs(set []string) []string {
	var args []string
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

// crdlessControlPlane is a control plane without the MagicIP CRD (the harness installs it).
func crdlessControlPlane(t *testing.T) *harness.ControlPlane {
	t.Helper()
	cp := harness.StartControlPlane(t)
	if _, err := cp.Kubectl("delete", "crd", crdName, "magicipnodes.magic-ip.dev", "--wait"); err != nil {
		t.Fatal(err)
	}
	return cp
}

func chartPath(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, harness.ChartDir)
}

// oldChart copies the chart and takes the Ports printer column and status.portSummary out of its CRD.
func oldChart(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "magic-ip")
	if err := os.CopyFS(dir, os.DirFS(chartPath(t))); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "crds", "magic-ip.dev_magicips.yaml")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var crd map[string]any
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	v := crd["spec"].(map[string]any)["versions"].([]any)[0].(map[string]any)
	v["additionalPrinterColumns"] = slices.DeleteFunc(v["additionalPrinterColumns"].([]any), func(c any) bool {
		return c.(map[string]any)["name"] == "Ports"
	})
	status, _, _ := unstructured.NestedMap(v, "schema", "openAPIV3Schema", "properties", "status", "properties")
	if _, ok := status["portSummary"]; !ok {
		t.Fatal("the CRD has no status.portSummary: pick another field for the old chart to lack")
	}
	unstructured.RemoveNestedField(v, "schema", "openAPIV3Schema", "properties", "status", "properties", "portSummary")
	if b, err = yaml.Marshal(crd); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func helmCmd(cp *harness.ControlPlane, args ...string) ([]byte, error) {
	return harness.Helm(append(args, "--kubeconfig", cp.Kubeconfig)...)
}

func helmOK(t *testing.T, cp *harness.ControlPlane, args ...string) {
	t.Helper()
	if _, err := helmCmd(cp, args...); err != nil {
		t.Fatal(err)
	}
}

func storedCRD(t *testing.T, cp *harness.ControlPlane) *unstructured.Unstructured {
	t.Helper()
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	if err := cp.Client.Get(t.Context(), client.ObjectKey{Name: crdName}, crd); err != nil {
		t.Fatalf("CRD %s: %v", crdName, err)
	}
	return crd
}

func crdColumns(t *testing.T, cp *harness.ControlPlane) []string {
	t.Helper()
	versions, _, _ := unstructured.NestedSlice(storedCRD(t, cp).Object, "spec", "versions")
	var names []string
	for _, v := range versions {
		cols, _, _ := unstructured.NestedSlice(v.(map[string]any), "additionalPrinterColumns")
		for _, c := range cols {
			names = append(names, c.(map[string]any)["name"].(string))
		}
	}
	return names
}

func magicIPUID(t *testing.T, cp *harness.ControlPlane, name string) string {
	t.Helper()
	m := &v1alpha1.MagicIP{}
	if err := cp.Client.Get(t.Context(), client.ObjectKey{Name: name}, m); err != nil {
		t.Fatalf("MagicIP %s: %v", name, err)
	}
	return string(m.UID)
}
