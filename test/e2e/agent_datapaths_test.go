package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/test/harness"
)

// datapaths are the agent's backends: the datapath tests run against each (--datapath).
var datapaths = []string{agent.DatapathIptables, agent.DatapathNftables}

// forEachDatapath runs f as one subtest per datapath, with the agent flag that selects it. Only
// for tests that cover both families in each run (the dual-stack ones); the others run
// forEachBackend.
func forEachDatapath(t *testing.T, f func(t *testing.T, dp []string)) {
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { f(t, []string{"--datapath", dp}) })
	}
}

var ourTable = &gnft.Table{Name: nftables.TableName, Family: nftables.TableFamily}

// ruleView reads and disturbs one datapath's rules of one family in a node's kernel: the tests
// check the same properties for both datapaths and both families, only how the kernel is read and
// disturbed differs.
type ruleView interface {
	// rules is the node's rules as text with their comments: iptables-save (ip6tables-save) of
	// every table, or one "chain: rule comment" line per rule of our nftables table (both
	// families: it is one inet table). present: some of ours are there.
	rules(ctx context.Context, ns *harness.Netns) (text string, present bool, err error)
	// redirect is how a rule sending new connections to ep (ip:port, [ip6]:port) reads in rules.
	redirect(ep string) string
	// flush empties our rules behind the agent's back, as a firewall reload might.
	flush(t *testing.T, ns *harness.Netns)
	// block makes every write of the agent's rules fail (once service svc loses its producers, for
	// iptables) until unblock is called: a foreign rule that jumps to the service's chain, which
	// iptables-restore then cannot delete; or our table taken over by another process that owns it
	// (NFT_TABLE_F_OWNER), where every netlink transaction of the agent is refused.
	block(t *testing.T, ns *harness.Netns, svc string) (unblock func())
	// failure is what the agent's error says failed when a write is refused.
	failure() string
}

// iptablesView is the iptables datapath's rules of one family: cmd is iptables or ip6tables.
type iptablesView struct{ cmd string }

func (v iptablesView) rules(ctx context.Context, ns *harness.Netns) (string, bool, error) {
	out, err := ns.Run(ctx, v.cmd+"-save")
	return out, strings.Contains(out, agent.ChainPrefix), err
}

func (iptablesView) redirect(ep string) string { return "--to-destination " + ep }

func (v iptablesView) failure() string { return v.cmd + "-restore" }

func (v iptablesView) flush(t *testing.T, ns *harness.Netns) {
	t.Helper()
	if _, err := ns.Run(t.Context(), v.cmd, "-t", "nat", "-F"); err != nil {
		t.Fatal(err)
	}
}

func (v iptablesView) block(t *testing.T, ns *harness.Netns, svc string) func() {
	t.Helper()
	save, err := ns.Run(t.Context(), v.cmd+"-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`--comment "?` + regexp.QuoteMeta(svc) + `"? -j (MAGIC-IP-SVC-\S+)`).FindStringSubmatch(save)
	if m == nil {
		t.Fatalf("no service chain for %s in:\n%s", svc, save)
	}
	foreign := []string{"OUTPUT", "-p", "tcp", "--dport", "9", "-m", "comment", "--comment", "foreign rule", "-j", m[1]}
	if _, err := ns.Run(t.Context(), v.cmd, append([]string{"-t", "nat", "-A"}, foreign...)...); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := ns.Run(t.Context(), v.cmd, append([]string{"-t", "nat", "-D"}, foreign...)...); err != nil {
			t.Fatal(err)
		}
	}
}

type nftView struct{}

func (nftView) rules(_ context.Context, ns *harness.Netns) (string, bool, error) {
	c, err := nftConn(ns)
	if err != nil {
		return "", false, err
	}
	defer c.CloseLasting()
	return nftRules(c)
}

func (nftView) redirect(ep string) string { return "dnat to " + ep }

func (nftView) failure() string { return "nftables transaction" }

// flush flushes every chain of our table (as `nft flush table inet magic-ip` would).
func (nftView) flush(t *testing.T, ns *harness.Netns) {
	t.Helper()
	c, err := nftConn(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	c.FlushTable(ourTable)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (nftView) block(t *testing.T, ns *harness.Netns, _ string) func() {
	return ns.TakeNftTable(t, nftables.TableName)
}

// nftConn opens nftables over netlink inside ns (as a tool on the node would, without nft).
func nftConn(ns *harness.Netns) (*gnft.Conn, error) {
	f, err := os.Open(ns.Path())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return gnft.New(gnft.WithNetNSFd(int(f.Fd())), gnft.AsLasting())
}

// nftRules lists the rules of our nftables table, one "chain: rule comment" per line, read back
// over c; exists is false when the table is not there.
func nftRules(c *gnft.Conn) (text string, exists bool, err error) {
	if _, err := c.ListTableOfFamily(nftables.TableName, nftables.TableFamily); errors.Is(err, unix.ENOENT) {
		return "", false, nil
	} else if err != nil {
		return "", false, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamily)
	if err != nil {
		return "", true, err
	}
	var b strings.Builder
	elems := nftMapElements{c: c}
	for _, ch := range chains {
		if ch.Table.Name != nftables.TableName {
			continue
		}
		rules, err := c.GetRules(ourTable, ch)
		if err != nil {
			return "", true, err
		}
		for _, r := range rules {
			com, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			fmt.Fprintf(&b, "%s: %s comment %q\n", ch.Name, nftRuleText(r.Exprs), com)
			lines, err := elems.lines(r.Exprs)
			if err != nil {
				return "", true, err
			}
			b.WriteString(lines)
		}
	}
	return b.String(), true, nil
}

// nodeState is the node's rules (as v reads them) and the addresses of ns (`ip -o addr show`
// with show's further arguments), as text.
func nodeState(ctx context.Context, v ruleView, ns *harness.Netns, show ...string) (string, error) {
	rules, _, err := v.rules(ctx, ns)
	if err != nil {
		return "", err
	}
	addrs, err := ns.Run(ctx, "ip", append([]string{"-o", "addr", "show"}, show...)...)
	return rules + addrs, err
}

// nftConnT is nftConn for a test: it fails the test on error and closes with it.
func nftConnT(t *testing.T, ns *harness.Netns) *gnft.Conn {
	t.Helper()
	c, err := nftConn(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseLasting() })
	return c
}

// nftComments is our nftables table in ns as nftView reads it; exists is false when the table is
// not there.
func nftComments(t *testing.T, ns *harness.Netns) (text string, exists bool) {
	t.Helper()
	text, exists, err := nftView{}.rules(t.Context(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return text, exists
}
