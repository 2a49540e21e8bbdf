package harness

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/magic-ip/magic-ip/certs"
)

// APIGatewayIP is where a cluster of real nodes finds the API server: the advertise address,
// hence the endpoint of the `kubernetes` Service (ClusterIP 10.0.0.1:443). It is a host on the
// cluster's underlay (netns "<cluster>-apigw") that terminates TLS with a certificate of the
// cluster CA and forwards to the API server on the root namespace's loopback. The same host is
// the API server's way into the cluster: its egress selector ("cluster") sends webhook and
// kubelet connections through an HTTP CONNECT proxy on a unix socket, dialed from this host.
// The root namespace itself never gets a link or route into the cluster.
const APIGatewayIP = underlayPrefix + "2"

// kubernetesServiceIP is the first address of ServiceCIDR: the `kubernetes` Service.
const kubernetesServiceIP = "10.0.0.1"

// RealControlPlane is what clusters of real nodes need from the control plane.
type RealControlPlane struct {
	// CAFile holds the cluster CA that pods trust (kube-controller-manager --root-ca-file, hence
	// the kube-root-ca.crt ConfigMap in every namespace).
	CAFile string
	// SAKeyFile is the service-account signing key (kube-controller-manager's token controller).
	SAKeyFile string
	// EgressSocket is the unix socket of the API server's egress proxy into the cluster.
	EgressSocket            string
	gatewayCert, gatewayKey []byte
}

// configureForRealNodes sets the API server flags that a cluster of kubelets needs: Node
// authorization and NodeRestriction (kubelets act as system:node:<name>), the ServiceAccount
// admission plugin (envtest turns it off: pods would get no token), the advertise address on
// the cluster's API gateway, endpoint routing for webhook Services (the API server dials the
// webhook pod, not its ClusterIP) and the egress selector.
func configureForRealNodes(env *envtest.Environment, dir string) (*RealControlPlane, error) {
	ca, err := certs.NewCA("magic-ip-test-cluster-ca", 30*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	r := &RealControlPlane{
		CAFile:       filepath.Join(dir, "cluster-ca.crt"),
		EgressSocket: filepath.Join(dir, "egress.sock"),
	}
	r.gatewayCert, r.gatewayKey, err = ca.Sign(certs.Options{
		Service: "kubernetes", Namespace: "default", Validity: 24 * time.Hour,
		Hosts: []string{kubernetesServiceIP, APIGatewayIP, "kubernetes", "kubernetes.default"},
	})
	if err != nil {
		return nil, fmt.Errorf("API gateway certificate: %w", err)
	}
	egress := filepath.Join(dir, "egress-selector.yaml")
	for path, data := range map[string][]byte{r.CAFile: ca.CertPEM, egress: egressSelectorConfig(r.EgressSocket)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	api := env.ControlPlane.GetAPIServer()
	api.CertDir = filepath.Join(dir, "apiserver")
	if err := os.MkdirAll(api.CertDir, 0o700); err != nil {
		return nil, err
	}
	r.SAKeyFile = filepath.Join(api.CertDir, "sa-signer.key")
	api.Configure().
		Set("authorization-mode", "Node,RBAC").
		Disable("disable-admission-plugins").
		Set("enable-admission-plugins", "NodeRestriction").
		Set("advertise-address", APIGatewayIP).
		Set("enable-aggregator-routing", "true").
		Set("egress-selector-config-file", egress)
	return r, nil
}

func egressSelectorConfig(socket string) []byte {
	return fmt.Appendf(nil, `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, socket)
}

// StartRealControlPlane starts a control plane for real nodes, with kube-controller-manager (all
// its default controllers: Deployments, DaemonSets, ReplicaSets, EndpointSlices, service
// accounts and their tokens, garbage collection, node lifecycle) and kube-scheduler.
func StartRealControlPlane(t T) *ControlPlane {
	t.Helper()
	cp, err := NewControlPlaneWith(ControlPlaneOptions{RealNodes: true})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	startControllerManager(t, cp, []string{
		"--root-ca-file=" + cp.Real.CAFile,
		"--service-account-private-key-file=" + cp.Real.SAKeyFile,
		"--node-monitor-grace-period=20s",
	}, "*")
	StartScheduler(t, cp)
	return cp
}

// StartScheduler runs kube-scheduler in the root namespace against the control plane.
func StartScheduler(t T, cp *ControlPlane) *Process {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := NodeAssetsDir(root)
	if err != nil {
		t.Fatalf("kube-scheduler: %v", err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("kube-scheduler: %v", err)
	}
	p := StartHostProcess(t, "kube-scheduler", filepath.Join(dir, "kube-scheduler"),
		"--kubeconfig="+cp.Kubeconfig, "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(port))
	if err := waitHealthz(t, p, port); err != nil {
		t.Fatalf("kube-scheduler: %v\n%s", err, tail(p.Output(), 30))
	}
	return p
}

// NodeKubeconfig writes a kubeconfig for the kubelet of node name: user system:node:<name> in
// group system:nodes, as the Node authorizer and NodeRestriction expect. Its server is the API
// server's loopback address, which every node namespace forwards (forwardAPIServer).
func (cp *ControlPlane) NodeKubeconfig(name string) (string, error) {
	u, err := cp.env.AddUser(envtest.User{Name: "system:node:" + name, Groups: []string{"system:nodes"}}, nil)
	if err != nil {
		return "", fmt.Errorf("node user %s: %w", name, err)
	}
	b, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(cp.dir, "kubelet-"+name+".kubeconfig")
	return path, os.WriteFile(path, b, 0o600)
}

// startAPIGateway creates the cluster's API gateway host (see APIGatewayIP): routes to every
// node's pod CIDR, the TLS front of the API server for pods, and the API server's egress proxy.
func (c *Cluster) startAPIGateway() error {
	ns, err := NewNetns(c.netnsName("apigw"))
	if err != nil {
		return err
	}
	c.t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			c.t.Errorf("API gateway: %v", err)
		}
	})
	if err := c.plugUplink(ns, "apigw", net.ParseIP(APIGatewayIP)); err != nil {
		return err
	}
	if err := ns.withHandle(func(h *netlink.Handle) error {
		for _, n := range c.Nodes {
			if err := h.RouteAdd(&netlink.Route{Dst: n.PodCIDR, Gw: n.IP}); err != nil {
				return fmt.Errorf("route %s via %s: %w", n.PodCIDR, n.IP, err)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("API gateway: %w", err)
	}
	if err := c.serveAPIFront(ns); err != nil {
		return err
	}
	return c.serveEgress(ns)
}

// serveAPIFront serves https://APIGatewayIP:<api port> inside ns with the cluster CA's
// certificate and forwards every request (bearer tokens included; watches and upgrades
// streamed) to the API server.
func (c *Cluster) serveAPIFront(ns *Netns) error {
	port, err := c.CP.APIPort()
	if err != nil {
		return err
	}
	upstream, err := url.Parse(c.CP.Config.Host)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(c.CP.Config.CAData) {
		return errors.New("API gateway: no CA in the admin config")
	}
	cert, err := tls.X509KeyPair(c.CP.Real.gatewayCert, c.CP.Real.gatewayKey)
	if err != nil {
		return err
	}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(upstream) },
		FlushInterval: -1,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true},
		// A client that goes away mid-watch is routine ("context canceled"), not worth a line.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(APIGatewayIP, strconv.Itoa(port)))
		return err
	}); err != nil {
		return fmt.Errorf("API gateway: %w", err)
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	c.t.Cleanup(func() { _ = srv.Close() })
	return nil
}

// serveEgress listens on the control plane's egress socket and answers each HTTP CONNECT of the
// API server by dialing the target from inside ns, then relaying bytes both ways.
func (c *Cluster) serveEgress(ns *Netns) error {
	_ = os.Remove(c.CP.Real.EgressSocket)
	ln, err := net.Listen("unix", c.CP.Real.EgressSocket)
	if err != nil {
		return fmt.Errorf("egress proxy: %w", err)
	}
	serveConns(c.t, ln, func(in net.Conn) { connectVia(ns, in) })
	return nil
}

// connectVia serves one HTTP CONNECT request on in, dialing its target inside ns.
func connectVia(ns *Netns, in net.Conn) {
	defer in.Close()
	br := bufio.NewReader(in)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		_, _ = io.WriteString(in, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	var out net.Conn
	if err := ns.Do(func() (err error) {
		out, err = net.DialTimeout("tcp", req.Host, 5*time.Second)
		return err
	}); err != nil {
		_, _ = fmt.Fprintf(in, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Error: %s\r\n\r\n", err)
		return
	}
	defer out.Close()
	if _, err := io.WriteString(in, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	pipe(&bufferedConn{Conn: in, r: br}, out)
}

// bufferedConn reads through the bufio.Reader that parsed the CONNECT request, so bytes the
// client sent right after it are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
