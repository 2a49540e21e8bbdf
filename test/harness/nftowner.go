package harness

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftTableOwner is NFT_TABLE_F_OWNER: the table belongs to the netlink socket that created it,
// which alone may change it, and goes with that socket.
const nftTableOwner = 2

// TakeNftTable replaces the inet nftables table name in n, in one transaction, by an empty one
// owned by a socket of the caller's, as another tool holding the name would: every transaction of
// anyone else that touches the table is refused (EPERM) until release closes the socket, which
// takes the table with it. The table must exist.
func (n *Netns) TakeNftTable(t T, name string) (release func()) {
	t.Helper()
	f, err := os.Open(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		t.Fatalf("netlink in %s: %v", n.Name, err)
	}
	var once sync.Once
	release = func() { once.Do(func() { c.Close() }) }
	t.Cleanup(release)
	tableName := netlink.Attribute{Type: unix.NFTA_TABLE_NAME, Data: []byte(name + "\x00")}
	owner := netlink.Attribute{Type: unix.NFTA_TABLE_FLAGS, Data: binary.BigEndian.AppendUint32(nil, nftTableOwner)}
	msgs := []netlink.Message{
		nfMsg(unix.NFNL_MSG_BATCH_BEGIN, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
		nfMsg(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_DELTABLE, netlink.Acknowledge, unix.NFPROTO_INET, 0, tableName),
		nfMsg(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWTABLE, netlink.Acknowledge|netlink.Create|netlink.Excl, unix.NFPROTO_INET, 0, tableName, owner),
		nfMsg(unix.NFNL_MSG_BATCH_END, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	}
	if err := takeTable(c, msgs); err != nil {
		t.Fatalf("taking over table inet %s in %s: %v", name, n.Name, err)
	}
	return release
}

// takeTable sends the batch and waits for the acks of its two requests.
func takeTable(c *netlink.Conn, msgs []netlink.Message) error {
	if _, err := c.SendMessages(msgs); err != nil {
		return err
	}
	for acks := 0; acks < 2; {
		got, err := c.Receive()
		if err != nil {
			return err
		}
		acks += len(got)
	}
	return nil
}

// nfMsg is one nfnetlink request: the nfgenmsg header (family, version 0, resource id) and attrs.
func nfMsg(typ int, flags netlink.HeaderFlags, family uint8, resID uint16, attrs ...netlink.Attribute) netlink.Message {
	data := binary.BigEndian.AppendUint16([]byte{family, unix.NFNETLINK_V0}, resID)
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		panic(fmt.Sprintf("nfnetlink attributes: %v", err))
	}
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request | flags}, Data: append(data, b...)}
}
