package harness

import (
	"embed"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"text/template"
)

//go:embed realnode
var realNodeFiles embed.FS

// realNodeConfig is what the templates in realnode/ are rendered with.
type realNodeConfig struct {
	Name, IP, Dir, Assets    string
	Cgroup, TrackCgroup      string
	Kubeconfig, PauseImage   string
	Bridge, PodCIDR, Gateway string
	RangeStart, RangeEnd     string
}

// realNodeDirs are made in the node's directory before anything starts.
var realNodeDirs = []string{"etc/cni/net.d", "run", "var-lib", "var-log", "kubelet", "volume-plugins", "cni-ipam"}

// writeConfig writes the start script, containerd's, the kubelet's and the CNI configuration.
func (r *RealNode) writeConfig(opts KubeletOptions) error {
	n := r.Node
	if opts.Kubeconfig == "" || opts.PauseImage == "" {
		return fmt.Errorf("KubeletOptions need Kubeconfig and PauseImage")
	}
	cfg := realNodeConfig{
		Name: n.Name, IP: n.IP.String(), Dir: r.Dir, Assets: r.assets,
		Cgroup: r.Cgroup, TrackCgroup: r.track,
		Kubeconfig: opts.Kubeconfig, PauseImage: opts.PauseImage,
		Bridge: PodBridge, PodCIDR: n.PodCIDR.String(), Gateway: n.Gateway.String(),
		RangeStart: podAddr(n, cniRangeStart).String(), RangeEnd: podAddr(n, cniRangeEnd).String(),
	}
	for _, d := range realNodeDirs {
		if err := os.MkdirAll(filepath.Join(r.Dir, d), 0o755); err != nil {
			return err
		}
	}
	for src, dst := range map[string]string{
		"start.sh":           "start.sh",
		"containerd.toml":    "etc/containerd.toml",
		"kubelet.yaml":       "etc/kubelet.yaml",
		"10-bridge.conflist": "etc/cni/net.d/10-bridge.conflist",
	} {
		if err := renderTemplate(src, filepath.Join(r.Dir, dst), cfg); err != nil {
			return err
		}
	}
	return nil
}

// podAddr is address .i of the node's pod CIDR.
func podAddr(n *Node, i int) net.IP {
	ip := n.PodCIDR.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], byte(i)).To4()
}

func renderTemplate(name, dst string, cfg realNodeConfig) error {
	tmpl, err := template.ParseFS(realNodeFiles, "realnode/"+name)
	if err != nil {
		return fmt.Errorf("template %s: %w", name, err)
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := tmpl.Execute(f, cfg); err != nil {
		f.Close()
		return fmt.Errorf("render %s: %w", dst, err)
	}
	return f.Close()
}
