package agent

import (
	"github.com/magic-ip/magic-ip/api/v1alpha1"

	"errors"
	"fmt"
	"slices"

	"github.com/go-logr/logr"
	gnft "github.com/google/nftables"

	"github.com/magic-ip/magic-ip/agent/nftables"
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

// chooseDatapath resolves auto: the node's kube-proxy in nftables mode (its table exists) means
// nftables; an iptables that cannot be used means nftables; otherwise iptables, as before. It
// returns the choice and why.
func chooseDatapath(want string, kubeProxyNft bool, iptErr error) (string, string) {
	switch {
	case want != DatapathAuto:
		return want, "--datapath=" + want
	case kubeProxyNft:
		return DatapathNftables, "auto: kube-proxy runs in nftables mode here (table ip " + kubeProxyTable + " exists)"
	case iptErr != nil:
		return DatapathNftables, fmt.Sprintf("auto: iptables is not usable (%v)", iptErr)
	}
	return DatapathIptables, "auto: iptables is usable and kube-proxy does not run in nftables mode"
}

// kubeProxyUsesNftables reports whether kube-proxy's nftables table exists in this namespace.
func kubeProxyUsesNftables() bool {
	conn, err := gnft.New()
	if err != nil {
		return false
	}
	tables, err := conn.ListTablesOfFamily(gnft.TableFamilyIPv4)
	return err == nil && slices.ContainsFunc(tables, func(t *gnft.Table) bool { return t.Name == kubeProxyTable })
}

// openDatapath opens the datapath --datapath names (auto: see chooseDatapath) and logs the
// choice; retire are the other backends that can be opened, whose rules go after the first sync.
func openDatapath(want string, local *LocalDetector, counters *NoProducerCounters, log logr.Logger) (dp Datapath, retire []Datapath, err error) {
	ipt, iptErr := NewIptables()
	kpNft := want == DatapathAuto && kubeProxyUsesNftables()
	name, why := chooseDatapath(want, kpNft, iptErr)
	log.Info("datapath chosen", "datapath", name, "why", why)
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
		return &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local}, retire, nil
	}
	return nil, nil, fmt.Errorf("--datapath %q: want one of %v", want, Datapaths())
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
