package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ChartDir is the Helm chart's directory relative to the repository root.
const ChartDir = "manifests/helm/magic-ip"

// HelmBinary is $HELM, or else the binary hack/helm.sh builds (building it first if needed:
// about 3 minutes cold), the way AssetsDir treats KUBEBUILDER_ASSETS.
func HelmBinary(root string) (string, error) {
	return envOrScript(root, "HELM", "helm.sh")
}

// HelmTemplate renders the chart in manifests/helm/magic-ip as
// `helm template <releaseName> <chart> --namespace <namespace> --include-crds --set <s>...`
// and returns the multi-document YAML. Each set is one --set argument, e.g. "config.port=9200".
// Rendering needs no cluster: lookup finds nothing, so certManager.enabled=false generates new
// certificates on every call.
func HelmTemplate(releaseName, namespace string, set ...string) ([]byte, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	args := []string{"template", releaseName, filepath.Join(root, ChartDir), "--namespace", namespace, "--include-crds"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return Helm(args...)
}

// Helm runs the helm binary (HelmBinary) with args and returns its stdout; an error carries the
// command line and helm's stderr. helm's cache, configuration and data directories are a fresh
// temporary directory: the user's repositories, plugins and registry logins stay out of it. For
// a cluster, pass --kubeconfig in args.
func Helm(args ...string) ([]byte, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	helm, err := HelmBinary(root)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "magic-ip-helm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(tmp, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(tmp, "config"),
		"HELM_DATA_HOME="+filepath.Join(tmp, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", helm, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
