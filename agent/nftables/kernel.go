package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/agent/memo"
)

// maxComment bounds a rule's comment (the kernel takes 256 bytes of user data).
const maxComment = 200

// Kernel writes and reads our table over netlink.
type Kernel struct {
	conn    *nftables.Conn
	table   *nftables.Table
	netnsFd int
	// pending counts what is queued for the next transaction; last, what the last one sent held.
	pending, last Transaction
	// gen tells a drift check whether anything but us committed since our last read (Unchanged);
	// genConn asks the kernel for the generation (nil: not dialed).
	gen     generation
	genConn *netlink.Conn
}

// NewKernel opens netlink to nftables in the caller's network namespace (netnsFd < 0) or in the
// namespace of netnsFd.
func NewKernel(netnsFd int) (*Kernel, error) {
	k := &Kernel{table: &nftables.Table{Name: TableName, Family: TableFamily}, netnsFd: netnsFd}
	if err := k.dial(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kernel) dial() error {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(roomForAcks)}
	if k.netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(k.netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables netlink: %w", err)
	}
	k.conn = conn
	return nil
}

// legacyTable is the table of agents before dual-stack (family ip, IPv4 only): the first write
// and the cleanup delete it, in the same transaction.
func legacyTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

// ackBuffer sizes both buffers of our socket. A transaction goes out in one sendmsg, which must
// fit the send buffer (EMSGSIZE at 100 MagicIPs with the default ~200 KiB), and the kernel
// acknowledges every message of it at once (google/nftables asks for an ack per message), one
// small skb each, which must fit the receive buffer (ENOBUFS at 20 MagicIPs). A table of 1,000
// MagicIPs is some 15,000 messages.
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
		serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ackBuffer),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, ackBuffer))
	}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("netlink buffers of %d bytes (SO_RCVBUFFORCE, SO_SNDBUFFORCE): %w", ackBuffer, serr)
	}
	return nil
}

// Close closes the netlink sockets.
func (k *Kernel) Close() error {
	err := k.conn.CloseLasting()
	if k.genConn != nil {
		err = errors.Join(err, k.genConn.Close())
		k.genConn = nil
	}
	return err
}

// Write replaces our table with rs in one transaction: the table is created (so that deleting it
// cannot fail), deleted with all it holds, and written anew. Packets see the old table or the new
// one, never a mix or none. It costs a few milliseconds whatever the size (the kernel waits for
// its base chains' hooks to be unregistered): it is for the first sync and drift, WriteChanges for
// the rest. The table ip magic-ip of an older agent goes in the same transaction, so an upgrade
// switches from its rules to ours at once.
func (k *Kernel) Write(rs Ruleset) error {
	k.pending = Transaction{}
	for _, t := range []*nftables.Table{legacyTable(), k.table} {
		k.conn.AddTable(t)
		k.conn.DelTable(t)
	}
	k.conn.AddTable(k.table)
	for _, f := range []family{ipv4, ipv6} {
		for _, set := range []*nftables.Set{k.addresses(f), k.hairpin(f), k.endpoints(f), k.dispatch(f)} {
			if err := k.conn.AddSet(set, nil); err != nil {
				return fmt.Errorf("set %s: %w", set.Name, err)
			}
		}
	}
	chains := make(map[string]*nftables.Chain, len(rs.Chains))
	for _, c := range rs.Chains {
		chains[c.Name] = k.conn.AddChain(k.chain(c))
	}
	// the dispatch map's elements go to chains: after them
	var elems []Element
	for _, d := range rs.Dispatch {
		elems = append(elems, d.Elements...)
	}
	if err := k.queueElements(false, rs.Addresses, rs.Hairpin, elems, rs.Dispatch); err != nil {
		return err
	}
	for _, c := range rs.Chains {
		k.addRules(chains[c.Name], c.Rules)
	}
	k.pending.Chains = len(rs.Chains)
	return k.flush(fmt.Sprintf("writing table %s (%d chains)", tableDesc, len(rs.Chains)))
}

// Transaction counts what one transaction wrote: chains added, flushed or deleted, rules added,
// and set and map elements added or deleted; and Compared, the chains compared with what the
// table held to find what to write.
type Transaction struct {
	Chains, Rules, Elements int
	Compared                int
}

// Last is what the last transaction Write or WriteChanges sent held.
func (k *Kernel) Last() Transaction { return k.last }

// WriteChanges turns prev, what the table holds, into rs in one transaction that touches only
// what changed: new chains are added, chains whose rules changed flushed and refilled, chains gone
// deleted (after the elements that went to them, in the same transaction), and the map and set
// elements that changed deleted or added — a producer replaced by another is an element deleted
// and one added, no rule. Base chains stay in place, so no hook is unregistered. It returns how
// many chains and elements it wrote (0: nothing changed, nothing sent).
func (k *Kernel) WriteChanges(prev, rs Ruleset) (int, error) {
	ch := chainChanges(prev, rs)
	ch.unpaired, ch.paired = diffAddrs(prev.Hairpin, rs.Hairpin)
	ch.unaddressed, ch.addressed = diffAddrs(prev.Addresses, rs.Addresses)
	ch.dispatchChanges(prev.Dispatch, rs.Dispatch)
	return k.writeChanges(ch)
}

// WritePatch is WriteChanges for a Ruleset that Renderer.Patch changed in place (p) from what
// the table holds: only the patched dispatch entries are compared, and the hairpin pairs p lists
// written, so its cost follows what changed, not the table's size.
func (k *Kernel) WritePatch(rs Ruleset, p Patch) (int, error) {
	ch := changes{unpaired: p.Unpaired, paired: p.Paired}
	for _, d := range p.Dispatch {
		ch.compareDispatch(&d.Old, rs.Dispatch[d.Index])
	}
	return k.writeChanges(ch)
}

// writeChanges writes ch in one transaction (none when nothing changed). Its order: chains added
// (a dispatch element may go to one), elements deleted (one that went to a chain gone must go
// first: the kernel refuses to delete a chain still in use, EBUSY; one deleted and added again
// ends up added), chains flushed and deleted, rules added, elements added.
func (k *Kernel) writeChanges(ch changes) (int, error) {
	k.pending = Transaction{Compared: ch.compared}
	for _, c := range ch.added {
		k.conn.AddChain(k.chain(c))
	}
	if err := k.queueElements(true, ch.unaddressed, ch.unpaired, ch.unmapped, ch.undispatched); err != nil {
		return 0, err
	}
	for _, c := range ch.changed {
		k.conn.FlushChain(k.chain(c))
	}
	for _, c := range ch.gone {
		k.conn.DelChain(k.chain(c))
	}
	fill := append(ch.added, ch.changed...)
	for _, c := range fill {
		k.addRules(k.chain(c), c.Rules)
	}
	if err := k.queueElements(false, ch.addressed, ch.paired, ch.mapped, ch.dispatched); err != nil {
		return 0, err
	}
	k.pending.Chains = len(fill) + len(ch.gone)
	n := k.pending.Chains + k.pending.Elements
	if n == 0 {
		return 0, nil
	}
	return n, k.flush(fmt.Sprintf("changing %d chains and %d elements of table %s", k.pending.Chains, k.pending.Elements, tableDesc))
}

// queueElements queues adding (or, with del, deleting) the magic addresses addrs, the hairpin
// pairs of ips, the endpoints map elements elems and the dispatch map elements of ds.
func (k *Kernel) queueElements(del bool, addrs, ips []netip.Addr, elems []Element, ds []Dispatch) error {
	for _, f := range []family{ipv4, ipv6} {
		if err := k.setElements(k.addresses(f), addressElements(ofFamily(addrs, f)), del); err != nil {
			return err
		}
		if err := k.setElements(k.hairpin(f), pairs(ofFamily(ips, f)), del); err != nil {
			return err
		}
		if err := k.setElements(k.endpoints(f), mapElements(elems, f), del); err != nil {
			return err
		}
		if err := k.setElements(k.dispatch(f), dispatchElements(ds, f), del); err != nil {
			return err
		}
	}
	return nil
}

// elementsPerMessage bounds the elements of one message: their list is one netlink attribute,
// whose length field has 16 bits (an element with its comment is up to some 300 bytes).
const elementsPerMessage = 128

// setElements queues adding (or, with del, deleting) elems to set, in messages of at most
// elementsPerMessage elements.
func (k *Kernel) setElements(set *nftables.Set, elems []nftables.SetElement, del bool) error {
	k.pending.Elements += len(elems)
	for len(elems) > 0 {
		part := elems[:min(len(elems), elementsPerMessage)]
		elems = elems[len(part):]
		op := k.conn.SetAddElements
		if del {
			op = k.conn.SetDeleteElements
		}
		if err := op(set, part); err != nil {
			return fmt.Errorf("set %s: %w", set.Name, err)
		}
	}
	return nil
}

// endpoints is the endpoints map of family f: service address . protocol . port . slot to
// producer address . port.
func (k *Kernel) endpoints(f family) *nftables.Set {
	addr := f.addrType()
	return &nftables.Set{Table: k.table, Name: f.endpointsMap(), IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
		DataType: nftables.MustConcatSetType(addr, nftables.TypeInetService)}
}

// addrType is the set data type of an address of family f.
func (f family) addrType() nftables.SetDatatype {
	if f.nfproto == ipv6.nfproto {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// mapElements are the endpoints map elements of elems in family f.
func mapElements(elems []Element, f family) []nftables.SetElement {
	var out []nftables.SetElement
	for _, e := range elems {
		if familyOf(e.Addr).nfproto == f.nfproto {
			out = append(out, nftables.SetElement{Key: slotKey(serviceKey(e.Addr, e.Protocol, e.Port), e.Slot), Val: endpointData(e.To), Comment: truncated(e.Comment)})
		}
	}
	return out
}

// dispatch is the dispatch map of family f: service address . protocol . port to a verdict
// (goto its spread chain).
func (k *Kernel) dispatch(f family) *nftables.Set {
	return &nftables.Set{Table: k.table, Name: f.dispatchMap(), IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(f.addrType(), nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.TypeVerdict}
}

// dispatchElements are the dispatch map elements of ds in family f.
func dispatchElements(ds []Dispatch, f family) []nftables.SetElement {
	var out []nftables.SetElement
	for _, d := range ds {
		if familyOf(d.Addr).nfproto == f.nfproto {
			out = append(out, nftables.SetElement{Key: serviceKey(d.Addr, d.Protocol, d.Port),
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: d.To}, Comment: truncated(d.Comment)})
		}
	}
	return out
}

// addresses is the set of the magic addresses of family f.
func (k *Kernel) addresses(f family) *nftables.Set {
	return &nftables.Set{Table: k.table, Name: f.pick(addressSet, addressSet6), KeyType: f.addrType()}
}

// addressElements are the set elements of addrs.
func addressElements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, nftables.SetElement{Key: a.AsSlice()})
	}
	return out
}

// hairpin is the hairpin set of family f.
func (k *Kernel) hairpin(f family) *nftables.Set {
	return &nftables.Set{Table: k.table, Name: f.pick(hairpinSet, hairpinSet6), Concatenation: true,
		KeyType: nftables.MustConcatSetType(f.addrType(), f.addrType())}
}

// ofFamily are the addresses of ips in family f.
func ofFamily(ips []netip.Addr, f family) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if familyOf(ip).nfproto == f.nfproto {
			out = append(out, ip)
		}
	}
	return out
}

// pairs are the set elements "ip . ip" of ips.
func pairs(ips []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ips))
	for _, ip := range ips {
		out = append(out, nftables.SetElement{Key: append(ip.AsSlice(), ip.AsSlice()...)})
	}
	return out
}

// diffAddrs lists what is in a but not b, and what is in b but not a (both sorted), in one pass
// (none when a and b are the same list).
func diffAddrs(a, b []netip.Addr) (onlyA, onlyB []netip.Addr) {
	if memo.Same(a, b) {
		return nil, nil
	}
	for len(a) > 0 || len(b) > 0 {
		switch c := cmpHead(a, b); {
		case c < 0:
			onlyA, a = append(onlyA, a[0]), a[1:]
		case c > 0:
			onlyB, b = append(onlyB, b[0]), b[1:]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return onlyA, onlyB
}

// cmpHead compares the first addresses of a and b; an empty list sorts after any address.
func cmpHead(a, b []netip.Addr) int {
	switch {
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	return a[0].Compare(b[0])
}

func (k *Kernel) chain(c Chain) *nftables.Chain {
	ch := &nftables.Chain{Name: c.Name, Table: k.table, Type: c.Type, Hooknum: c.Hook}
	if c.Hook != nil {
		ch.Priority = nftables.ChainPriorityRef(c.Priority)
	}
	return ch
}

func (k *Kernel) addRules(ch *nftables.Chain, rules []Rule) {
	k.pending.Rules += len(rules)
	for _, r := range rules {
		k.conn.AddRule(&nftables.Rule{Table: k.table, Chain: ch, Exprs: r.Exprs, UserData: comment(r.Comment)})
	}
}

func (k *Kernel) flush(what string) error {
	k.last = k.pending
	if err := k.send(); err != nil {
		return fmt.Errorf("nftables transaction %s: %w", what, err)
	}
	return nil
}

// send sends the queued transaction. The kernel answers every message of a refused batch, but the
// library stops reading at an EPERM or ENOBUFS and leaves the rest on the socket, where they would
// be taken for the answers to the next transaction, refusing it in turn, forever: after a refusal
// the socket is replaced.
func (k *Kernel) send() error {
	err := k.conn.Flush()
	if err == nil {
		k.gen.committed()
		return nil
	}
	k.gen.failed()
	_ = k.conn.CloseLasting()
	if derr := k.dial(); derr != nil {
		return errors.Join(err, derr)
	}
	return err
}

// changes is what WriteChanges writes: the chains of rs that prev lacks (added), those whose
// rules differ (changed), those of prev that rs lacks (gone), and the elements gone and added of
// the dispatch and endpoints maps, the hairpin sets (their producer IPs) and the address sets;
// compared counts the chains and dispatch entries compared.
type changes struct {
	added, changed, gone     []Chain
	undispatched, dispatched []Dispatch
	unmapped, mapped         []Element
	unpaired, paired         []netip.Addr
	unaddressed, addressed   []netip.Addr
	compared                 int
}

// chainChanges compares prev with rs. When both hold the same chains in the same order (a sync
// that changed producers only) they are compared in place, without indexing them.
func chainChanges(prev, rs Ruleset) changes {
	var ch changes
	if sameNames(prev.Chains, rs.Chains) {
		for i, c := range rs.Chains {
			ch.compare(&prev.Chains[i], c)
		}
		return ch
	}
	before, after := prev.byName(), rs.byName()
	for _, c := range rs.Chains {
		ch.compare(before[c.Name], c)
	}
	for _, c := range prev.Chains {
		if after[c.Name] == nil {
			ch.gone = append(ch.gone, c)
		}
	}
	return ch
}

// dispatchChanges compares the dispatch entries of prev with those of next: in place when both
// hold the same services in the same order (a sync that changed producers only), by service
// otherwise. A list handed on as is (the same slice) is not compared.
func (ch *changes) dispatchChanges(prev, next []Dispatch) {
	if memo.Same(prev, next) {
		return
	}
	if slices.EqualFunc(prev, next, Dispatch.sameService) {
		for i, d := range next {
			ch.compareDispatch(&prev[i], d)
		}
		return
	}
	before, after := make(map[string]*Dispatch, len(prev)), make(map[string]bool, len(next))
	for i := range prev {
		before[prev[i].key()] = &prev[i]
	}
	for _, d := range next {
		key := d.key()
		after[key] = true
		ch.compareDispatch(before[key], d)
	}
	for _, d := range prev {
		if !after[d.key()] {
			ch.undispatched, ch.unmapped = append(ch.undispatched, d), append(ch.unmapped, d.Elements...)
		}
	}
}

// compareDispatch records how d differs from old, its entry in the table (nil: none): its
// dispatch element added, or replaced (deleted and added) when it goes elsewhere; its endpoints
// elements compared slot by slot.
func (ch *changes) compareDispatch(old *Dispatch, d Dispatch) {
	ch.compared++
	var was []Element
	switch {
	case old == nil:
		ch.dispatched = append(ch.dispatched, d)
	case old.To != d.To || old.Comment != d.Comment:
		ch.undispatched, ch.dispatched = append(ch.undispatched, *old), append(ch.dispatched, d)
		fallthrough
	default:
		was = old.Elements
	}
	gone, added := diffElements(was, d.Elements)
	ch.unmapped, ch.mapped = append(ch.unmapped, gone...), append(ch.mapped, added...)
}

func (d Dispatch) sameService(o Dispatch) bool {
	return d.Addr == o.Addr && d.Protocol == o.Protocol && d.Port == o.Port
}

// key is the dispatch map's key of d.
func (d Dispatch) key() string { return string(serviceKey(d.Addr, d.Protocol, d.Port)) }

func sameNames(a, b []Chain) bool {
	return slices.EqualFunc(a, b, func(x, y Chain) bool { return x.Name == y.Name })
}

// compare records how c differs from old, its chain in the table (nil: none).
func (ch *changes) compare(old *Chain, c Chain) {
	ch.compared++
	switch {
	case old == nil:
		ch.added = append(ch.added, c)
	case !sameRules(old.Rules, c.Rules):
		ch.changed = append(ch.changed, c)
	}
}

// diffElements compares a service's endpoints elements slot by slot (a list handed on as is is not
// compared): those of a that b lacks or holds otherwise are gone, those of b, added.
func diffElements(a, b []Element) (gone, added []Element) {
	if memo.Same(a, b) {
		return nil, nil
	}
	for i := range max(len(a), len(b)) {
		switch {
		case i >= len(a):
			added = append(added, b[i])
		case i >= len(b):
			gone = append(gone, a[i])
		case a[i] != b[i]:
			gone, added = append(gone, a[i]), append(added, b[i])
		}
	}
	return gone, added
}

// sameRules compares rules by text and comment; a list handed on as is (the same slice) is not
// compared rule by rule.
func sameRules(a, b []Rule) bool {
	return memo.Same(a, b) || slices.EqualFunc(a, b, func(x, y Rule) bool { return x.Text == y.Text && x.Comment == y.Comment })
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

// Delete removes our table with everything in it, and the table ip magic-ip an older agent may
// have left; a missing table is fine.
func (k *Kernel) Delete() error {
	var errs []error
	for _, t := range []*nftables.Table{k.table, legacyTable()} {
		errs = append(errs, k.deleteTable(t))
	}
	return errors.Join(errs...)
}

func (k *Kernel) deleteTable(t *nftables.Table) error {
	desc := fmt.Sprintf("table %s %s", familyName(t.Family), t.Name)
	if _, err := k.conn.ListTableOfFamily(t.Name, t.Family); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", desc, err)
	}
	k.conn.DelTable(t)
	if err := k.send(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete %s: %w", desc, err)
	}
	return nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyINet {
		return "inet"
	}
	return "ip"
}

// Observed is what the kernel holds of our table: per chain, the comment and expression count of
// each rule, in order (nil Chains: no table).
type Observed struct {
	Chains map[string][]ObservedRule
	// Hairpin: the hairpin set's elements (their first address), sorted; nil with no set.
	Hairpin []netip.Addr
	// Addresses: the address sets' elements, sorted; nil with a set missing.
	Addresses []netip.Addr
	// Endpoints: both endpoints maps' elements, by key (see mapEntry); nil with a map missing.
	Endpoints map[string]string
	// Dispatch: both dispatch maps' elements, by key (see mapEntry, the data its verdict as
	// verdictText gives it); nil with a map missing.
	Dispatch map[string]string
}

// ObservedRule is one rule as read back.
type ObservedRule struct {
	Comment string
	Exprs   int
}

// Read lists our table's chains and their rules (one dump for the chains, one for every rule: see
// readRules) and its sets' and maps' elements.
func (k *Kernel) Read() (Observed, error) {
	gen, genErr := k.generationNow()
	return k.readAt(gen, genErr)
}

// readAt reads the table and, when gen (asked just before: genErr nil) is known, records it as
// the generation of this read: a transaction committed while it reads moves the generation past
// what the next check expects, which then reads again.
func (k *Kernel) readAt(gen uint32, genErr error) (Observed, error) {
	o, err := k.read()
	if err == nil && genErr == nil {
		k.gen = generation{known: true, read: gen, readAt: time.Now()}
	}
	return o, err
}

func (k *Kernel) read() (Observed, error) {
	if _, err := k.conn.ListTableOfFamily(TableName, TableFamily); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Observed{}, nil
		}
		return Observed{}, fmt.Errorf("look up table %s: %w", tableDesc, err)
	}
	chains, err := k.conn.ListChainsOfTableFamily(TableFamily)
	if err != nil {
		return Observed{}, fmt.Errorf("list chains of table %s: %w", tableDesc, err)
	}
	o := Observed{Chains: map[string][]ObservedRule{}}
	sets, err := k.conn.GetSets(k.table)
	if err != nil {
		return Observed{}, fmt.Errorf("list sets of table %s: %w", tableDesc, err)
	}
	if o.Hairpin, err = k.readAddrs(sets, k.hairpin); err != nil {
		return Observed{}, err
	}
	if o.Addresses, err = k.readAddrs(sets, k.addresses); err != nil {
		return Observed{}, err
	}
	if o.Endpoints, err = k.readEndpoints(sets); err != nil {
		return Observed{}, err
	}
	if o.Dispatch, err = k.readDispatch(sets); err != nil {
		return Observed{}, err
	}
	rules, err := k.readRules()
	if err != nil {
		return Observed{}, err
	}
	for _, c := range chains {
		if c.Table.Name != TableName {
			continue
		}
		o.Chains[c.Name] = rules[c.Name]
		if o.Chains[c.Name] == nil {
			o.Chains[c.Name] = []ObservedRule{}
		}
	}
	return o, nil
}

// readAddrs lists the elements (their first address) of the sets of both families that setOf
// names, sorted; nil when a set is missing.
func (k *Kernel) readAddrs(sets []*nftables.Set, setOf func(family) *nftables.Set) ([]netip.Addr, error) {
	ips := []netip.Addr{}
	found, err := k.readSets(sets, setOf, func(f family, e nftables.SetElement) {
		if ip, ok := netip.AddrFromSlice(e.Key[:min(int(f.len), len(e.Key))]); ok {
			ips = append(ips, ip)
		}
	})
	if !found || err != nil {
		return nil, err
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips, nil
}

// readEndpoints lists both endpoints maps' elements by key; nil when a map is missing.
func (k *Kernel) readEndpoints(sets []*nftables.Set) (map[string]string, error) {
	out := map[string]string{}
	found, err := k.readSets(sets, k.endpoints, func(_ family, e nftables.SetElement) { out[string(e.Key)] = mapEntry(e.Val, e.Comment) })
	if !found || err != nil {
		return nil, err
	}
	return out, nil
}

// readDispatch lists both dispatch maps' elements by key; nil when a map is missing.
func (k *Kernel) readDispatch(sets []*nftables.Set) (map[string]string, error) {
	out := map[string]string{}
	found, err := k.readSets(sets, k.dispatch, func(_ family, e nftables.SetElement) {
		out[string(e.Key)] = mapEntry([]byte(verdictText(e.Val)), e.Comment)
	})
	if !found || err != nil {
		return nil, err
	}
	return out, nil
}

// verdictText renders a verdict map element's data as the library hands it over (the attributes
// of NFTA_DATA_VERDICT: the code, and the chain of a jump or goto) in nft syntax.
func verdictText(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return fmt.Sprintf("verdict %x", val)
	}
	ad.ByteOrder = binary.BigEndian
	var code int32
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil {
		return fmt.Sprintf("verdict %x", val)
	}
	switch code {
	case int32(expr.VerdictGoto):
		return "goto " + chain
	case int32(expr.VerdictJump):
		return "jump " + chain
	}
	return fmt.Sprintf("verdict %d %s", code, chain)
}

// readSets hands each element of the set of each family (setOf) to each; found is false when
// one of them is not among sets. The library's element dump hides the errno of a missing set,
// so the sets are listed first: a missing one is drift, not a failed sync.
func (k *Kernel) readSets(sets []*nftables.Set, setOf func(family) *nftables.Set, each func(family, nftables.SetElement)) (found bool, err error) {
	for _, f := range []family{ipv4, ipv6} {
		set := setOf(f)
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == set.Name }) {
			return false, nil
		}
		elems, err := k.conn.GetSetElements(set)
		if err != nil {
			return false, fmt.Errorf("list set %s of table %s: %w", set.Name, tableDesc, err)
		}
		for _, e := range elems {
			each(f, e)
		}
	}
	return true, nil
}

// mapEntry is what Observed.Endpoints holds of an element: its data and comment.
func mapEntry(val []byte, comment string) string { return string(val) + "\x00" + comment }

// mapWant is one element we wrote to a map: its key, what Observed holds of it (mapEntry) and its
// text.
type mapWant struct{ key, entry, text string }

// driftMap describes how a pair of maps read back (got; names, the maps' names) differ from the
// elements we wrote (want): missing, extra or different elements (their number, and the first of
// each); other, what a different element holds otherwise.
func driftMap(names, other string, want []mapWant, got map[string]string) []string {
	if got == nil {
		return []string{fmt.Sprintf("maps %s missing", names)}
	}
	var missing, differ []string
	for _, w := range want {
		switch v, ok := got[w.key]; {
		case !ok:
			missing = append(missing, w.text)
		case v != w.entry:
			differ = append(differ, w.text)
		}
	}
	var diffs []string
	for what, list := range map[string][]string{"missing": missing, "holding another " + other + " or comment": differ} {
		if len(list) > 0 {
			diffs = append(diffs, fmt.Sprintf("maps %s: %d elements %s (first %s)", names, len(list), what, list[0]))
		}
	}
	if extra := len(got) - (len(want) - len(missing)); extra > 0 {
		diffs = append(diffs, fmt.Sprintf("maps %s: %d elements not ours", names, extra))
	}
	return diffs
}

// driftEndpoints describes how the endpoints maps read back (got) differ from the elements of rs.
func driftEndpoints(rs Ruleset, got map[string]string) []string {
	var want []mapWant
	for _, d := range rs.Dispatch {
		for _, e := range d.Elements {
			want = append(want, mapWant{key: string(slotKey(serviceKey(e.Addr, e.Protocol, e.Port), e.Slot)),
				entry: mapEntry(endpointData(e.To), truncated(e.Comment)), text: e.Text()})
		}
	}
	return driftMap(endpointsMap+", "+endpointsMap6, "producer", want, got)
}

// driftDispatch describes how the dispatch maps read back (got) differ from the elements of rs.
func driftDispatch(rs Ruleset, got map[string]string) []string {
	want := make([]mapWant, 0, len(rs.Dispatch))
	for _, d := range rs.Dispatch {
		want = append(want, mapWant{key: d.key(), entry: mapEntry([]byte("goto "+d.To), truncated(d.Comment)), text: d.Text()})
	}
	return driftMap(dispatchMap+", "+dispatchMap6, "verdict", want, got)
}

// Drift describes how o differs from rs, the ruleset we last wrote: the table or chains missing,
// chains of ours we did not write, and the first differing rule of each chain. Empty: in place.
func (o Observed) Drift(rs Ruleset) []string {
	if o.Chains == nil {
		return []string{"table " + tableDesc + " missing"}
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
	written := rs.byName()
	for name := range o.Chains {
		if written[name] == nil {
			diffs = append(diffs, fmt.Sprintf("chain %s stale", name))
		}
	}
	diffs = append(diffs, driftAddrs(hairpinSet+", "+hairpinSet6, rs.Hairpin, o.Hairpin)...)
	diffs = append(diffs, driftAddrs(addressSet+", "+addressSet6, rs.Addresses, o.Addresses)...)
	diffs = append(diffs, driftEndpoints(rs, o.Endpoints)...)
	diffs = append(diffs, driftDispatch(rs, o.Dispatch)...)
	slices.Sort(diffs)
	return diffs
}

// driftAddrs describes how a pair of address sets read back (got; nil: missing) differ from what
// we wrote (want).
func driftAddrs(names string, want, got []netip.Addr) []string {
	if missing, extra := diffAddrs(want, got); got == nil || len(missing)+len(extra) > 0 {
		return []string{fmt.Sprintf("sets %s: missing %v, not ours %v (sets found: %v)", names, missing, extra, got != nil)}
	}
	return nil
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
