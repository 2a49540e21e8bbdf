package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dumpAttempts bounds the dumps of our rules read again because the kernel flagged them
// interrupted (the ruleset changed while it was read), as ip(8) does for its dumps.
const dumpAttempts = 5

// dialNetfilter opens a netfilter netlink socket of its own in the Kernel's namespace (raw
// requests google/nftables does not make: a one-dump rule read, the ruleset generation).
func (k *Kernel) dialNetfilter() (*netlink.Conn, error) {
	return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: max(k.netnsFd, 0)})
}

// readRules reads every rule of our table in one netlink dump, keeping of each its chain, its
// comment and how many expressions it has (what Drift compares). google/nftables' GetRules asks
// for one chain at a time and parses every expression: at 1,000 MagicIPs × 3 ports (3,000 chains,
// a dump and its round trip each) the read-back of a full resync took 1.5 s that way. Nothing is
// parsed here but those three attributes.
func (k *Kernel) readRules() (map[string][]ObservedRule, error) {
	conn, err := k.dialNetfilter()
	if err != nil {
		return nil, fmt.Errorf("netlink for a rule dump: %w", err)
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")}})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(TableFamily), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	for attempt := 1; ; attempt++ {
		msgs, err := conn.Execute(req)
		if err != nil {
			return nil, fmt.Errorf("dump the rules of table %s: %w", tableDesc, err)
		}
		rules, interrupted, err := parseRules(msgs)
		if err != nil || !interrupted {
			return rules, err
		}
		if attempt == dumpAttempts {
			return nil, fmt.Errorf("dump the rules of table %s: interrupted %d times (the ruleset kept changing)", tableDesc, attempt)
		}
	}
}

// parseRules turns the messages of a rule dump into rules by chain; interrupted reports a
// message the kernel flagged NLM_F_DUMP_INTR.
func parseRules(msgs []netlink.Message) (rules map[string][]ObservedRule, interrupted bool, err error) {
	rules = map[string][]ObservedRule{}
	for _, m := range msgs {
		interrupted = interrupted || m.Header.Flags&netlink.DumpInterrupted != 0
		if len(m.Data) < 4 {
			return nil, false, errors.New("rule dump: a message without its nfgenmsg header")
		}
		chain, r, err := parseRule(m.Data[4:])
		if err != nil {
			return nil, false, fmt.Errorf("rule dump: %w", err)
		}
		rules[chain] = append(rules[chain], r)
	}
	return rules, interrupted, nil
}

// parseRule reads a rule's chain, comment and expression count from its attributes.
func parseRule(b []byte) (chain string, r ObservedRule, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", r, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.Comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.NFTA_LIST_ELEM {
						r.Exprs++
					}
				}
				return nil
			})
		}
	}
	return chain, r, ad.Err()
}
