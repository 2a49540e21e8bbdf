package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// ControlPlane is a real kube-apiserver + etcd with the magic-ip CRDs installed.
type ControlPlane struct {
	env *envtest.Environment
	// Config is an admin rest config.
	Config *rest.Config
	// Client is an admin controller-runtime client that knows core and magic-ip types.
	Client client.Client
	Scheme *runtime.Scheme
	// Kubeconfig is the path of an admin kubeconfig file for processes (agents, kubectl).
	Kubeconfig string
	// AgentKubeconfig and WebhookKubeconfig act as the service accounts the shipped RBAC binds
	// (manifests/rbac, applied at start), the way the DaemonSet and Deployment run.
	AgentKubeconfig, WebhookKubeconfig string
	// AssetsDir holds kube-apiserver, etcd and kubectl.
	AssetsDir string
	// Real is set when the control plane serves clusters of real nodes (StartRealControlPlane).
	Real *RealControlPlane
	dir  string
}

// ControlPlaneOptions configure NewControlPlaneWith.
type ControlPlaneOptions struct {
	// RealNodes prepares the API server for nodes that run a real kubelet: Node authorization,
	// the ServiceAccount admission plugin, an advertise address inside the cluster and an egress
	// path into the cluster network (see realcontrolplane.go).
	RealNodes bool
}

// NewScheme returns a scheme with the core Kubernetes types and MagicIP.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// StartControlPlane starts a control plane for one test and stops it in t.Cleanup.
func StartControlPlane(t T) *ControlPlane {
	t.Helper()
	cp, err := NewControlPlane()
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return cp
}

// NewControlPlane starts kube-apiserver and etcd (from KUBEBUILDER_ASSETS, or built by
// hack/envtest-assets.sh when unset) and installs the CRDs from manifests/crd. Stop it with Stop.
func NewControlPlane() (*ControlPlane, error) {
	return NewControlPlaneWith(ControlPlaneOptions{})
}

// NewControlPlaneWith is NewControlPlane with options.
func NewControlPlaneWith(opts ControlPlaneOptions) (*ControlPlane, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := AssetsDir(root)
	if err != nil {
		return nil, err
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	// controller-runtime wants a logger before its first log line; the harness's own clients are quiet.
	ctrllog.SetLogger(logr.Discard())
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(root, "manifests", "crd")},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   scheme,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  60 * time.Second,
	}
	cp := &ControlPlane{env: env, Scheme: scheme, AssetsDir: assets}
	if cp.dir, err = os.MkdirTemp("", "magic-ip-cp-"); err != nil {
		return nil, err
	}
	if opts.RealNodes {
		if cp.Real, err = configureForRealNodes(env, cp.dir); err != nil {
			return nil, errors.Join(err, os.RemoveAll(cp.dir))
		}
	}
	if cp.Config, err = env.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err), os.RemoveAll(cp.dir))
	}
	if err := cp.init(); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	if opts.RealNodes {
		return cp, nil // the chart or kustomize under test installs namespace and RBAC
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cp.installRBAC(ctx); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	return cp, nil
}

func (cp *ControlPlane) init() error {
	c, err := client.New(cp.Config, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	cp.Client = c
	cp.Kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, cp.env.KubeConfig, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// Stop stops the API server and etcd and removes their files.
func (cp *ControlPlane) Stop() error {
	err := cp.env.Stop()
	if cp.dir != "" {
		err = errors.Join(err, os.RemoveAll(cp.dir))
	}
	return err
}

// APIPort is the API server's TCP port on 127.0.0.1.
func (cp *ControlPlane) APIPort() (int, error) {
	u, err := url.Parse(cp.Config.Host)
	if err != nil {
		return 0, err
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return 0, fmt.Errorf("api server address %q: %w", cp.Config.Host, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return 0, fmt.Errorf("api server listens on %s, want loopback", host)
	}
	return strconv.Atoi(port)
}

// Kubectl runs the kubectl built with the control plane against it.
func (cp *ControlPlane) Kubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(cp.AssetsDir, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// kubectlOutput runs kubectl and returns its stdout; stderr goes into the error.
func kubectlOutput(kubectl string, args ...string) ([]byte, error) {
	cmd := exec.Command(kubectl, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// RepoRoot finds the magic-ip module root from the working directory upwards.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/magic-ip/magic-ip\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("magic-ip module root (go.mod) not found above the working directory")
		}
		dir = parent
	}
}

// AssetsDir is KUBEBUILDER_ASSETS, or else the directory hack/envtest-assets.sh builds into
// (building there first if needed: about 6 minutes cold).
func AssetsDir(root string) (string, error) {
	return envOrScript(root, "KUBEBUILDER_ASSETS", "envtest-assets.sh")
}

// envOrScript is $env when set, or else what hack/<script> prints: the scripts build a test
// binary once, cache it by version, and print where it is.
func envOrScript(root, env, script string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	return runAssetScript(root, script)
}

// runAssetScript runs hack/<script>, which builds test binaries once (cached by version), and
// returns the directory or path it prints.
func runAssetScript(root, script string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "hack", script))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build test binaries (hack/%s): %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}
