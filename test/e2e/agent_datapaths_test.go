package e2e

import (
	"errors"
	"fmt"
	"os"
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

// forEachDatapath runs f as one subtest per datapath, with the agent flag that selects it.
func forEachDatapath(t *testing.T, f func(t *testing.T, dp []string)) {
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { f(t, []string{"--datapath", dp}) })
	}
}

// nftConn opens nftables over netlink inside ns (as a tool on the node would, without nft).
func nftConn(t *testing.T, ns *harness.Netns) *gnft.Conn {
	t.Helper()
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := gnft.New(gnft.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var ourTable = &gnft.Table{Name: nftables.TableName, Family: nftables.TableFamily}

// nftComments lists the comments of the rules in our nftables table in ns, one "chain: comment"
// per line; exists is false when the table is not there.
func nftComments(t *testing.T, ns *harness.Netns) (comments string, exists bool) {
	t.Helper()
	c := nftConn(t, ns)
	if _, err := c.ListTableOfFamily(nftables.TableName, nftables.TableFamily); errors.Is(err, unix.ENOENT) {
		return "", false
	} else if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamily)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, ch := range chains {
		if ch.Table.Name != nftables.TableName {
			continue
		}
		rules, err := c.GetRules(ourTable, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			com, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			fmt.Fprintf(&b, "%s: %s\n", ch.Name, com)
		}
	}
	return b.String(), true
}

// nftFlushOurs flushes every chain of our table in ns behind the agent's back (as
// `nft flush table inet magic-ip` would).
func nftFlushOurs(t *testing.T, ns *harness.Netns) {
	t.Helper()
	c := nftConn(t, ns)
	c.FlushTable(ourTable)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}
