// Package nftables is the agent's native nftables datapath: it renders what the node must hold
// (Input, built by the agent from its State) into one table of its own, inet magic-ip, and writes
// that table in one netlink transaction per sync with github.com/google/nftables (no nft binary).
// Nothing outside that table is ever read or written (but the table ip magic-ip of older agents,
// which the first write and the cleanup delete).
package nftables

import (
	"net/netip"

	"github.com/google/nftables"
)

// TableName is the name of our table: everything we write is in it.
const TableName = "magic-ip"

// TableFamily is our table's family: inet, so one table and one transaction hold the rules of
// both address families.
const TableFamily = nftables.TableFamilyINet

// tableDesc names our table in messages, as nft does.
const tableDesc = "inet " + TableName

// Verdict is what a new connection to a service port gets when it was not redirected.
type Verdict string

const (
	// Reject answers TCP with a reset and UDP with ICMP port unreachable.
	Reject Verdict = "Reject"
	// Drop drops the packet silently.
	Drop Verdict = "Drop"
)

// Input is what the node must hold, IPv4 and IPv6 alike.
type Input struct {
	// Addresses are the magic addresses the node carries, sorted: each gets the host-client
	// masquerade and refusals for undeclared ports.
	Addresses []netip.Addr
	Services  []Service
	Local     Local
}

// Service is one magic address, port and protocol with its producers.
type Service struct {
	// Key names it in comments and chain names ("<magicip>:<port name>").
	Key      string
	Addr     netip.Addr
	Port     uint16
	Protocol string // "tcp" or "udp"
	Verdict  Verdict
	// Endpoints are the producers new connections are spread across (none: the Verdict).
	Endpoints []Endpoint
}

// Endpoint is one producer's address and target port.
type Endpoint struct {
	Pod  string
	Addr netip.AddrPort
	// Note qualifies it in comments ("terminating", "fallback to node x"); empty for a Ready
	// local producer.
	Note string
	// Remote: a producer on another node (Fallback); it never sends from this node, so it gets no
	// hairpin rule.
	Remote bool
}

// Local tells node-local traffic (redirected) from off-node traffic (never redirected). Traffic
// arriving on one of External is off-node. Then, with All, everything else is node-local;
// without, only traffic from one of Sources or arriving on one of Interfaces (a trailing "+"
// matches a name prefix) is.
type Local struct {
	All        bool
	External   []string
	Sources    []netip.Prefix
	Interfaces []string
}
