package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	gnft "github.com/google/nftables"

	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Values of --datapath.
const (
	DatapathAuto     = "auto"
	DatapathIptables = v1alpha1.DatapathIPTables
	DatapathNftables = v1alpha1.DatapathNFTables
)

// Datapaths are the values --datapath accepts.
func Datapaths() []string { return []string{DatapathAuto, DatapathIptables, DatapathNftables} }

// kubeProxyTable is the table kube-proxy writes in its nftables mode.
const kubeProxyTable = "kube-proxy"

// iptablesHints are the chains kubelet creates in the mangle table of the iptables backend it
// uses (legacy or nft); the iptables wrapper of kube-proxy's and our image looks for them too.
var iptablesHints = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// Short reasons of a datapath choice: the reason label of magic_ip_agent_datapath_info.
const (
	ReasonFlag              = "flag"                // --datapath named it
	ReasonKubeProxyNftables = "kube-proxy-nftables" // kube-proxy's nftables table exists
	ReasonIptablesUnusable  = "iptables-unusable"   // no usable iptables: nftables
	ReasonIptablesHint      = "iptables-hint"       // kubelet's hint chain: the node uses iptables
	ReasonNoHint            = "no-hint"             // nothing says: iptables, the default
)

// NodeHints is what auto looks at on the node.
type NodeHints struct {
	// KubeProxyNftables: kube-proxy's nftables table (ip kube-proxy) exists.
	KubeProxyNftables bool
	// IptablesHint is the first of iptablesHints found in the mangle table ("": none).
	IptablesHint string
}

// DatapathChoice is the datapath chosen, with a short reason (a metric label) and a long one (the
// log's).
type DatapathChoice struct {
	Datapath, Reason, Why string
}

// chooseDatapath resolves auto. kube-proxy in nftables mode (its table exists) means nftables,
// even where kubelet's iptables hint is there too (kubelet creates it whatever kube-proxy's mode);
// an iptables that cannot be used means nftables; kubelet's hint chain means the node uses
// iptables; with no hint at all, iptables as before (the default, said so).
func chooseDatapath(want string, h NodeHints, iptErr error) DatapathChoice {
	switch {
	case want != DatapathAuto:
		return DatapathChoice{want, ReasonFlag, "--datapath=" + want}
	case h.KubeProxyNftables:
		return DatapathChoice{DatapathNftables, ReasonKubeProxyNftables, "auto: kube-proxy runs in nftables mode here (table ip or ip6 " + kubeProxyTable + " exists)"}
	case iptErr != nil:
		return DatapathChoice{DatapathNftables, ReasonIptablesUnusable, fmt.Sprintf("auto: iptables is not usable (%v)", iptErr)}
	case h.IptablesHint != "":
		return DatapathChoice{DatapathIptables, ReasonIptablesHint, "auto: the node uses iptables (chain " + h.IptablesHint + " in its mangle table) and kube-proxy does not run in nftables mode"}
	}
	return DatapathChoice{DatapathIptables, ReasonNoHint, "auto: no hint of the node's mode (no kube-proxy nftables table, no " +
		strings.Join(iptablesHints, " or ") + " chain): iptables, the default"}
}

// detectHints reads the node's hints: kube-proxy's nftables table over netlink, and kubelet's hint
// chains with one iptables-save of the mangle table (skipped when iptables is not usable or the
// table says enough). A hint that cannot be read counts as absent, and is logged.
func detectHints(ctx context.Context, iptErr error, log logr.Logger) NodeHints {
	h := NodeHints{KubeProxyNftables: kubeProxyUsesNftables()}
	if h.KubeProxyNftables || iptErr != nil {
		return h
	}
	hint, err := iptablesHint(ctx)
	if err != nil {
		log.Error(err, "reading kubelet's iptables hint failed: taken as absent")
	}
	h.IptablesHint = hint
	return h
}

// iptablesHint returns the first of iptablesHints the mangle table holds ("": none).
func iptablesHint(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "iptables-save", "-t", "mangle").Output()
	if err != nil {
		return "", fmt.Errorf("iptables-save -t mangle: %w", err)
	}
	for _, c := range iptablesHints {
		if bytes.Contains(out, []byte("\n:"+c+" ")) || bytes.HasPrefix(out, []byte(":"+c+" ")) {
			return c, nil
		}
	}
	return "", nil
}

// kubeProxyUsesNftables reports whether one of kube-proxy's nftables tables exists in this
// namespace: ip kube-proxy, or ip6 kube-proxy alone on an IPv6-only node.
func kubeProxyUsesNftables() bool {
	conn, err := gnft.New()
	if err != nil {
		return false
	}
	tables, err := conn.ListTables()
	return err == nil && slices.ContainsFunc(tables, func(t *gnft.Table) bool {
		return t.Name == kubeProxyTable && (t.Family == gnft.TableFamilyIPv4 || t.Family == gnft.TableFamilyIPv6)
	})
}

// openDatapath opens the datapath --datapath names (auto: see chooseDatapath) and logs the
// choice; retire are the other backends that can be opened, whose rules go after the first sync.
func openDatapath(ctx context.Context, want string, local *LocalDetector, counters *NoProducerCounters, log logr.Logger) (dp Datapath, retire []Datapath, choice DatapathChoice, err error) {
	ipt, iptErr := NewIptables()
	var hints NodeHints
	if want == DatapathAuto {
		hints = detectHints(ctx, iptErr, log)
	}
	choice = chooseDatapath(want, hints, iptErr)
	log.Info("datapath chosen", "datapath", choice.Datapath, "reason", choice.Reason, "why", choice.Why)
	dp, retire, err = openChosen(choice.Datapath, ipt, iptErr, local, counters, log)
	return dp, retire, choice, err
}

// openChosen opens the datapath name and the others to retire.
func openChosen(name string, ipt *Iptables, iptErr error, local *LocalDetector, counters *NoProducerCounters, log logr.Logger) (dp Datapath, retire []Datapath, err error) {
	switch name {
	case DatapathIptables:
		if iptErr != nil {
			return nil, nil, iptErr
		}
		ipt6, noIpt6 := NewIp6tables()
		dp = &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, NoIpt6: noIpt6, Local: local, Log: log, Counters: counters}
		if k, err := nftables.NewKernel(-1); err == nil {
			retire = append(retire, &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}})
		}
		return dp, retire, nil
	case DatapathNftables:
		k, err := nftables.NewKernel(-1)
		if err != nil {
			return nil, nil, err
		}
		if iptErr == nil {
			ipt6, _ := NewIp6tables()
			retire = append(retire, &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, Log: log})
		}
		nft := &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local}
		if counters != nil {
			if ck, err := nftables.NewKernel(-1); err != nil {
				log.Error(err, "no netlink socket for the rule counters: magic_ip_agent_no_producer_connections_total is not served")
			} else {
				nft.Counters = nftablesCounters(counters, ck)
			}
		}
		return nft, retire, nil
	}
	return nil, nil, fmt.Errorf("--datapath %q: want one of %v", name, Datapaths())
}

// cleanupDatapaths are the datapaths a cleanup removes: both, whichever wrote the node's rules
// (an agent may have run with the other one before); a backend that cannot be opened is reported
// and the other still cleaned.
func cleanupDatapaths() ([]Datapath, error) {
	var dps []Datapath
	var errs []error
	if ipt, err := NewIptables(); err != nil {
		errs = append(errs, err)
	} else {
		ipt6, _ := NewIp6tables() // without it (no IPv6 in the kernel) there are no IPv6 rules to remove
		dps = append(dps, &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, Log: logr.Discard()})
	}
	if k, err := nftables.NewKernel(-1); err != nil {
		errs = append(errs, err)
	} else {
		dps = append(dps, &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}})
	}
	return dps, errors.Join(errs...)
}
