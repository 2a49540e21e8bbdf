package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// showReal is `make demo NODES=real`: the chart installed by helm on two real nodes (kubelet +
// containerd + runc + CNI bridge, our images built from our Dockerfiles), a producer DaemonSet on
// node 1 and a consumer Deployment on both, then an agent upgrade under load. kubeProxyMode is
// kube-proxy's mode on the nodes (the agent's datapath follows it).
func showReal(t *demoT, kubeProxyMode string, keep bool, readyFile string) error {
	if kubeProxyMode != harness.KubeProxyIptables && kubeProxyMode != harness.KubeProxyNftables {
		return fmt.Errorf("-kube-proxy-mode %q: want %s or %s", kubeProxyMode, harness.KubeProxyIptables, harness.KubeProxyNftables)
	}
	if err := prerequisites(); err != nil {
		return err
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	assets, err := harness.AssetsDir(root)
	if err != nil {
		return err
	}
	if err := os.Setenv("KUBEBUILDER_ASSETS", assets); err != nil {
		return err
	}
	done := step("images from Dockerfile.agent, Dockerfile.webhook and the test image (buildah, cached), a control plane with controllers and scheduler, 2 real nodes (containerd + kubelet + kube-proxy in %s mode)", kubeProxyMode)
	rc := harness.NewRealClusterWith(t, harness.RealClusterOptions{Nodes: 2, KubeProxyMode: kubeProxyMode})
	harness.StartCertManager(t, rc.CP)
	done()
	ctx := t.Context()
	done = step("helm install magic-ip (cert-manager issues the webhook's certificate)")
	if err := rc.InstallChart("magic-ip"); err != nil {
		return err
	}
	if err := rc.WaitProductReady(ctx, "magic-ip"); err != nil {
		return err
	}
	done()
	done = step("producer DaemonSet on node 1, MagicIP apm %s:8126, consumer Deployment on both nodes (a connect every 2 ms)", harness.WorkloadMagicAddr)
	probes, err := rc.StartWorkload(ctx, rc.Nodes[0])
	if err != nil {
		return err
	}
	done()
	if err := realTable(t, rc, probes); err != nil {
		return err
	}
	if err := realUpgrade(t, rc, probes[0]); err != nil {
		return err
	}
	fmt.Println("\nall checks passed.")
	if keep {
		return stayUp(t, rc.CP, readyFile)
	}
	return nil
}

// realTable prints, per node, the datapath its agent chose (its MagicIPNode), what the consumer
// container holds and who answers it, after a second of probing; it fails unless every node
// reports its datapath, node 1's consumer is answered locally and node 2's refused.
func realTable(t *demoT, rc *harness.RealCluster, probes []harness.ConsumerProbe) error {
	ctx := t.Context()
	for _, p := range probes {
		if err := p.Reset(ctx); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Second):
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tDATAPATH\tCONSUMER POD\tENV IN THE CONTAINER\tLAST SECOND\tANSWERED BY (pod node, as seen: consumer IP and UID)")
	var problems []error
	for i, p := range probes {
		env, err := p.Env(ctx)
		if err != nil {
			return err
		}
		s, err := p.Stats(ctx)
		if err != nil {
			return err
		}
		var rec v1alpha1.MagicIPNode
		if err := rc.CP.Client.Get(ctx, client.ObjectKey{Name: p.Node.Name}, &rec); err != nil || rec.Datapath == "" {
			problems = append(problems, fmt.Errorf("%s: no datapath in its MagicIPNode (%v)", p.Node.Name, err))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\tAPM_MAGIC_HOST=%s APM_MAGIC_PORT_APM=%s DD_ENTITY_ID=%.8s…\t%d answered, %d refused, %d timeouts\t%s\n",
			p.Node.Name, rec.Datapath, p.Pod.Name, env["APM_MAGIC_HOST"], env["APM_MAGIC_PORT_APM"], env["DD_ENTITY_ID"],
			s.OK, s.Refused, s.Timeouts, strings.TrimSpace(s.LastAnswer))
		switch {
		case i == 0 && (s.OK == 0 || s.Failed() != 0 || !strings.Contains(s.LastAnswer, " "+p.Pod.Status.PodIP+" "+string(p.Pod.UID))):
			problems = append(problems, fmt.Errorf("%s: %d answered, %d failed, last answer %q: want every connection answered locally", p.Pod.Name, s.OK, s.Failed(), s.LastAnswer))
		case i == 1 && (s.Refused == 0 || s.OK+s.Timeouts+s.Errors != 0):
			problems = append(problems, fmt.Errorf("%s: want every connection refused at once (no producer on its node)", p.Pod.Name))
		}
	}
	w.Flush()
	return errors.Join(problems...)
}

// realUpgrade rolls the agent DaemonSet to a new image tag with helm while node 1's consumer
// keeps connecting, and fails if one connection failed.
func realUpgrade(t *demoT, rc *harness.RealCluster, p harness.ConsumerProbe) error {
	ctx := t.Context()
	newTag := rc.Images.Tag + "-upgrade"
	fmt.Printf("\n==> helm upgrade: the agent DaemonSet rolls to image tag %s while %s connects every 2 ms\n", newTag, p.Pod.Name)
	rc.TagImage(t, rc.Images.Agent, newTag)
	if err := p.Reset(ctx); err != nil {
		return err
	}
	start := time.Now()
	if err := rc.UpgradeChart("magic-ip", "image.tag="+newTag); err != nil {
		return err
	}
	if err := rc.WaitProductReady(ctx, "magic-ip"); err != nil {
		return err
	}
	s, err := p.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("    rolled out in %s: %d connections, %d failed\n", time.Since(start).Round(time.Millisecond), s.Attempts, s.Failed())
	if s.Failed() != 0 || s.OK == 0 {
		return fmt.Errorf("during the agent upgrade: %d answered, %d refused, %d timeouts, %d errors (last error %q)", s.OK, s.Refused, s.Timeouts, s.Errors, s.LastError)
	}
	return nil
}
