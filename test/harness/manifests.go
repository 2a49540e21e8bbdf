package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Service accounts the shipped RBAC (manifests/rbac) binds. Every control plane applies that RBAC,
// and the agent and webhook the harness starts authenticate as these accounts (by impersonation),
// so every e2e test also proves the shipped rules are sufficient.
const (
	AgentServiceAccount   = "magic-ip-agent"
	WebhookServiceAccount = "magic-ip-webhook"
)

// ServiceAccountUser is the user name the API server gives a service account's token.
func ServiceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// Kustomize renders manifests/<dir> with the kubectl built for the tests (kubectl kustomize).
func (cp *ControlPlane) Kustomize(dir string) ([]*unstructured.Unstructured, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	out, err := cp.KubectlQuiet("kustomize", filepath.Join(root, "manifests", dir))
	if err != nil {
		return nil, err
	}
	return DecodeObjects(out)
}

// KubectlQuiet is Kubectl that keeps stderr out of the returned stdout.
func (cp *ControlPlane) KubectlQuiet(args ...string) ([]byte, error) {
	return kubectlOutput(filepath.Join(cp.AssetsDir, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
}

// DecodeObjects splits a multi-document YAML (or JSON) stream into objects, skipping empty documents.
func DecodeObjects(b []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode object %d: %w", len(objs)+1, err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// Apply writes objs with server-side apply, in order. With dryRun the API server validates and
// admits every object (schema, CEL, defaulting, admission) but stores nothing.
func (cp *ControlPlane) Apply(ctx context.Context, objs []*unstructured.Unstructured, dryRun bool) error {
	var errs []error
	for _, o := range objs {
		o = o.DeepCopy()
		o.SetManagedFields(nil)
		o.SetResourceVersion("")
		opts := []client.PatchOption{client.ForceOwnership, client.FieldOwner("magic-ip-tests")}
		if dryRun {
			opts = append(opts, client.DryRunAll)
		}
		//nolint:staticcheck // client.Apply on unstructured objects is what we want here.
		if err := cp.Client.Patch(ctx, o, client.Apply, opts...); err != nil {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// installRBAC creates the product's namespace and applies manifests/rbac, then writes one
// kubeconfig per service account that impersonates it.
func (cp *ControlPlane) installRBAC(ctx context.Context) error {
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": WebhookNamespace},
	}}
	objs, err := cp.Kustomize("rbac")
	if err != nil {
		return fmt.Errorf("render manifests/rbac: %w", err)
	}
	if err := cp.Apply(ctx, append([]*unstructured.Unstructured{ns}, objs...), false); err != nil {
		return fmt.Errorf("apply manifests/rbac: %w", err)
	}
	cp.AgentKubeconfig, err = cp.writeImpersonating(AgentServiceAccount)
	if err != nil {
		return err
	}
	cp.WebhookKubeconfig, err = cp.writeImpersonating(WebhookServiceAccount)
	return err
}

// writeImpersonating writes a copy of the admin kubeconfig that acts as the service account
// magic-ip-system/<sa>, with the groups its token would carry.
func (cp *ControlPlane) writeImpersonating(sa string) (string, error) {
	cfg, err := clientcmd.Load(cp.env.KubeConfig)
	if err != nil {
		return "", fmt.Errorf("parse kubeconfig: %w", err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = ServiceAccountUser(WebhookNamespace, sa)
		ai.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + WebhookNamespace, "system:authenticated"}
	}
	path := filepath.Join(cp.dir, sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("write kubeconfig for %s: %w", sa, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return "", err
	}
	return path, nil
}
