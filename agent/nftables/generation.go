package nftables

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The kernel numbers the rulesets of a network namespace: every committed nftables transaction
// (ours, kube-proxy's, an iptables-nft command's, anyone's) adds one to the generation, and a
// transaction that changes nothing adds nothing. When the generation is the one our last read of
// the table saw plus the transactions we committed since, nobody else committed anything: the
// table holds what we last wrote, and a drift check need not read it back (at 1,000 MagicIPs the
// read is a dump of some 14,000 rules: 0.74 s, and its after-effects slowed the next change sync
// to twice its cost).
//
// Each of our transactions changes something: Write deletes the table, WriteChanges and
// WritePatch add or delete rules, chains or elements the kernel holds otherwise by our account.
// Only drift makes one a no-op (an element someone else added already), and that someone's
// transaction moved the generation too; to bound what so rare a case could hide, a drift check
// reads the table for real when its last read is older than maxTrust.

// maxTrust bounds how long drift checks trust the generation without reading the table.
const maxTrust = 10 * time.Minute

// generation tracks what the generation says of our table.
type generation struct {
	// known: read (the generation at our last read of the table) and ours (the transactions we
	// committed since) are to be trusted; false before the first read and after a failed write.
	known  bool
	read   uint32
	ours   uint32
	readAt time.Time
}

// committed records a transaction of ours that the kernel accepted; failed, one it refused (or
// whose outcome is unknown).
func (g *generation) committed() { g.ours++ }
func (g *generation) failed()    { g.known = false }

// vouches reports whether the generation now is that of our last read plus our own transactions
// since, and that read is recent enough (maxTrust): nobody else changed anything.
func (g *generation) vouches(now uint32) bool {
	return g.known && time.Since(g.readAt) <= maxTrust && now == g.read+g.ours
}

// Unchanged reports whether nothing but our own transactions changed the namespace's nftables
// rulesets since our last read of the table (see generation), and that read is recent enough: a
// drift check may skip reading the table back. An error (the generation could not be read) says
// nothing: read the table.
func (k *Kernel) Unchanged() (bool, error) {
	now, err := k.generationNow()
	return err == nil && k.gen.vouches(now), err
}

// ReadIfChanged is Read, unless the generation says nobody but us changed anything since the last
// read (Unchanged): then it reads nothing (changed false). One question for both: the generation
// it gets is the one Read records. A generation it cannot get makes it read.
func (k *Kernel) ReadIfChanged() (o Observed, changed bool, err error) {
	gen, genErr := k.generationNow()
	if genErr == nil && k.gen.vouches(gen) {
		return Observed{}, false, nil
	}
	o, err = k.readAt(gen, genErr)
	return o, true, err
}

// generationNow asks the kernel for the namespace's ruleset generation (NFT_MSG_GETGEN) over a
// netlink socket of its own, kept open: closing a netfilter netlink socket makes the kernel wait
// for the destruction of what the last transactions deleted (an RCU grace period: some 10 ms
// here), which a socket per question paid at every drift check. A failed question closes it; the
// next one dials anew.
func (k *Kernel) generationNow() (uint32, error) {
	if k.genConn == nil {
		conn, err := k.dialNetfilter()
		if err != nil {
			return 0, fmt.Errorf("netlink for the ruleset generation: %w", err)
		}
		k.genConn = conn
	}
	msgs, err := k.genConn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err == nil {
		var gen uint32
		if gen, err = parseGeneration(msgs); err == nil {
			return gen, nil
		}
	}
	_ = k.genConn.Close()
	k.genConn = nil
	return 0, fmt.Errorf("get the ruleset generation: %w", err)
}

// parseGeneration reads NFTA_GEN_ID from the answer to NFT_MSG_GETGEN.
func parseGeneration(msgs []netlink.Message) (uint32, error) {
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("ruleset generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("ruleset generation: %w", err)
		}
	}
	return 0, fmt.Errorf("ruleset generation: no NFTA_GEN_ID in the answer (%d messages)", len(msgs))
}
