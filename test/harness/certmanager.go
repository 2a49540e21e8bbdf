package harness

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// CertManager is the real cert-manager (controller and cainjector, built by
// hack/certmanager-assets.sh) running against a control plane.
type CertManager struct {
	Controller, CAInjector *Process
	// AssetsDir holds cert-manager-controller, cert-manager-cainjector and crds/.
	AssetsDir string
}

// CertManagerAssetsDir is CERT_MANAGER_ASSETS, or else the directory hack/certmanager-assets.sh
// builds into (building there first if needed: minutes when cold).
func CertManagerAssetsDir(root string) (string, error) {
	return envOrScript(root, "CERT_MANAGER_ASSETS", "certmanager-assets.sh")
}

// InstallCertManagerCRDs applies cert-manager's CRDs through the API server and waits until each
// is Established and served. It returns the assets directory.
func InstallCertManagerCRDs(t T, cp *ControlPlane) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := CertManagerAssetsDir(root)
	if err != nil {
		t.Fatal(err)
	}
	// InstallCRDs creates (or updates) them and waits until discovery serves their resources.
	crds, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(dir, "crds")}, ErrorIfPathMissing: true,
		MaxTime: 60 * time.Second, PollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("install cert-manager CRDs from %s: %v", filepath.Join(dir, "crds"), err)
	}
	if len(crds) == 0 {
		t.Fatalf("no CRDs in %s", filepath.Join(dir, "crds"))
	}
	var last error
	err = wait.PollUntilContextTimeout(t.Context(), 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		for _, crd := range crds {
			if last = crdEstablished(ctx, cp.Client, crd.Name); last != nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("cert-manager CRDs not Established: %v", errors.Join(last, err))
	}
	return dir
}

func crdEstablished(ctx context.Context, c client.Client, name string) error {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("apiextensions.k8s.io/v1")
	u.SetKind("CustomResourceDefinition")
	if err := c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return nil
		}
	}
	return fmt.Errorf("CRD %s not Established: conditions %v", name, conds)
}

// StartCertManager installs cert-manager's CRDs and runs its controller and cainjector against
// cp. Start the control plane first: t.Cleanup runs last-in first-out, and cert-manager must stop
// before the API server (otherwise its stop takes 20 s instead of 1 s).
func StartCertManager(t T, cp *ControlPlane) *CertManager {
	t.Helper()
	cm := &CertManager{AssetsDir: InstallCertManagerCRDs(t, cp)}
	cm.Controller = StartHostProcess(t, "cert-manager-controller", filepath.Join(cm.AssetsDir, "cert-manager-controller"), "--kubeconfig", cp.Kubeconfig)
	cm.CAInjector = StartHostProcess(t, "cert-manager-cainjector", filepath.Join(cm.AssetsDir, "cert-manager-cainjector"), "--kubeconfig", cp.Kubeconfig)
	// Runs before StartHostProcess's own stops (last in, first out): both must exit 0 on SIGTERM.
	t.Cleanup(func() {
		for _, p := range []*Process{cm.Controller, cm.CAInjector} {
			if err := p.Stop(); err != nil {
				t.Errorf("%s did not stop cleanly on SIGTERM: %v\n%s", p.Name, err, tail(p.Output(), 20))
			}
		}
	})
	return cm
}

// Err reports a cert-manager process that has ended (waits use it to fail fast).
func (cm *CertManager) Err() error {
	for _, p := range []*Process{cm.Controller, cm.CAInjector} {
		if p.Exited() {
			return fmt.Errorf("%s exited:\n%s", p.Name, tail(p.Output(), 30))
		}
	}
	return nil
}
