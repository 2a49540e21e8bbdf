package nftables

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// maxComment bounds a rule's comment (the kernel takes 256 bytes of user data).
const maxComment = 200

// Kernel writes and reads our table over netlink.
type Kernel struct {
	conn  *nftables.Conn
	table *nftables.Table
}

// NewKernel opens netlink to nftables in the caller's network namespace (netnsFd < 0) or in the
// namespace of netnsFd.
func NewKernel(netnsFd int) (*Kernel, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(roomForAcks)}
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables netlink: %w", err)
	}
	return &Kernel{conn: conn, table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}}, nil
}

// ackBuffer is the receive buffer of our socket: the kernel acknowledges every message of a
// transaction at once (google/nftables asks for an ack per message), one small skb each, and a
// table of 1,000 MagicIPs is some 15,000 messages. The default buffer (rmem_default, ~200 KiB)
// overflows at a few hundred (ENOBUFS).
const ackBuffer = 64 << 20

// roomForAcks makes acks carry no copy of the request (NETLINK_CAP_ACK) and forces a receive
// buffer that holds them all (SO_RCVBUFFORCE, the agent has CAP_NET_ADMIN).
func roomForAcks(c *netlink.Conn) error {
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		return fmt.Errorf("netlink NETLINK_CAP_ACK: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ackBuffer)
	}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("netlink receive buffer of %d bytes (SO_RCVBUFFORCE): %w", ackBuffer, serr)
	}
	return nil
}

// Close closes the netlink socket.
func (k *Kernel) Close() error { return k.conn.CloseLasting() }

// Write replaces our table with rs in one transaction: the table is created (so that deleting it
// cannot fail), deleted with all it holds, and written anew. Packets see the old table or the new
// one, never a mix or none.
func (k *Kernel) Write(rs Ruleset) error {
	k.conn.AddTable(k.table)
	k.conn.DelTable(k.table)
	k.conn.AddTable(k.table)
	chains := make(map[string]*nftables.Chain, len(rs.Chains))
	for _, c := range rs.Chains {
		ch := &nftables.Chain{Name: c.Name, Table: k.table, Type: c.Type, Hooknum: c.Hook}
		if c.Hook != nil {
			ch.Priority = nftables.ChainPriorityRef(c.Priority)
		}
		chains[c.Name] = k.conn.AddChain(ch)
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			k.conn.AddRule(&nftables.Rule{Table: k.table, Chain: chains[c.Name], Exprs: r.Exprs, UserData: comment(r.Comment)})
		}
	}
	if err := k.conn.Flush(); err != nil {
		return fmt.Errorf("nftables transaction writing table ip %s (%d chains): %w", TableName, len(rs.Chains), err)
	}
	return nil
}

func comment(c string) []byte {
	if c == "" {
		return nil
	}
	if len(c) > maxComment {
		c = c[:maxComment]
	}
	return userdata.AppendString(nil, userdata.TypeComment, c)
}

// Delete removes our table with everything in it; a missing table is fine.
func (k *Kernel) Delete() error {
	if _, err := k.conn.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("look up table ip %s: %w", TableName, err)
	}
	k.conn.DelTable(k.table)
	if err := k.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete table ip %s: %w", TableName, err)
	}
	return nil
}

// Observed is what the kernel holds of our table: per chain, the comment and expression count of
// each rule, in order (nil Chains: no table).
type Observed struct {
	Chains map[string][]ObservedRule
}

// ObservedRule is one rule as read back.
type ObservedRule struct {
	Comment string
	Exprs   int
}

// Read lists our table's chains and their rules (one dump for the chains, one per chain).
func (k *Kernel) Read() (Observed, error) {
	if _, err := k.conn.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Observed{}, nil
		}
		return Observed{}, fmt.Errorf("look up table ip %s: %w", TableName, err)
	}
	chains, err := k.conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return Observed{}, fmt.Errorf("list chains of table ip %s: %w", TableName, err)
	}
	o := Observed{Chains: map[string][]ObservedRule{}}
	for _, c := range chains {
		if c.Table.Name != TableName {
			continue
		}
		rules, err := k.conn.GetRules(k.table, c)
		if err != nil {
			return Observed{}, fmt.Errorf("list rules of chain %s in table ip %s: %w", c.Name, TableName, err)
		}
		o.Chains[c.Name] = []ObservedRule{}
		for _, r := range rules {
			com, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			o.Chains[c.Name] = append(o.Chains[c.Name], ObservedRule{Comment: com, Exprs: len(r.Exprs)})
		}
	}
	return o, nil
}

// Drift describes how o differs from rs, the ruleset we last wrote: the table or chains missing,
// chains of ours we did not write, and the first differing rule of each chain. Empty: in place.
func (o Observed) Drift(rs Ruleset) []string {
	if o.Chains == nil {
		return []string{"table ip " + TableName + " missing"}
	}
	var diffs []string
	for _, c := range rs.Chains {
		got, ok := o.Chains[c.Name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("chain %s missing", c.Name))
			continue
		}
		if d := diffRules(c.Rules, got); d != "" {
			diffs = append(diffs, fmt.Sprintf("chain %s: %s", c.Name, d))
		}
	}
	for name := range o.Chains {
		if rs.Chain(name) == nil {
			diffs = append(diffs, fmt.Sprintf("chain %s stale", name))
		}
	}
	slices.Sort(diffs)
	return diffs
}

func diffRules(want []Rule, got []ObservedRule) string {
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			return fmt.Sprintf("rule %d (%s) missing, %d rules found of %d", i+1, want[i].Text, len(got), len(want))
		case i >= len(want):
			return fmt.Sprintf("rule %d (comment %q) not ours, %d rules found of %d", i+1, got[i].Comment, len(got), len(want))
		case got[i].Comment != truncated(want[i].Comment) || got[i].Exprs != len(want[i].Exprs):
			return fmt.Sprintf("rule %d: wrote %q (%d expressions), found comment %q (%d expressions)",
				i+1, want[i].Text, len(want[i].Exprs), got[i].Comment, got[i].Exprs)
		}
	}
	return ""
}

func truncated(c string) string {
	if len(c) > maxComment {
		return c[:maxComment]
	}
	return c
}
