package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ServeTCP runs a TCP server inside the namespace on port (all addresses) that greets every
// connection with "<name>\n" and then echoes what it receives. Stopped in t.Cleanup.
func (n *Netns) ServeTCP(t T, port int, name string) {
	t.Helper()
	n.serveTCP(t, port, name, func(net.Conn) string { return name })
}

// ServeTCPShowingPeer is ServeTCP with the greeting "<name> from <client IP>": the source address
// the server sees (SplitGreeting takes it apart).
func (n *Netns) ServeTCPShowingPeer(t T, port int, name string) {
	t.Helper()
	n.serveTCP(t, port, name, func(c net.Conn) string {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		return name + " from " + host
	})
}

// SplitGreeting splits a ServeTCPShowingPeer greeting into the server's name and the client IP
// it saw (empty when the greeting has none).
func SplitGreeting(greeting string) (name, peer string) {
	name, peer, _ = strings.Cut(greeting, " from ")
	return name, peer
}

func (n *Netns) serveTCP(t T, port int, name string, greeting func(net.Conn) string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("tcp server %s on %s:%d: %v", name, n.Name, port, err)
	}
	serveConns(t, ln, func(c net.Conn) {
		if _, err := io.WriteString(c, greeting(c)+"\n"); err == nil {
			_, _ = io.Copy(c, c)
		}
	})
}

// serveConns accepts connections on ln until t's cleanup, handling each in its own goroutine;
// the cleanup closes the listener and every open connection and waits for the handlers.
func serveConns(t T, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	conns := newConnSet()
	t.Cleanup(func() {
		ln.Close()
		conns.closeAll()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.add(c)
			wg.Go(func() {
				defer conns.remove(c)
				handle(c)
			})
		}
	})
}

// ServeUDP runs a UDP server inside the namespace on port, IPv4 and IPv6, that answers every
// datagram with "<name>", from the address the datagram was sent to (IP_PKTINFO and IPV6_PKTINFO,
// as well-behaved UDP servers such as DNS servers do). Stopped in t.Cleanup.
func (n *Netns) ServeUDP(t T, port int, name string) {
	t.Helper()
	var pc4, pc6 net.PacketConn
	if err := n.Do(func() (err error) {
		if pc4, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc6, err = net.ListenPacket("udp6", fmt.Sprintf(":%d", port)) // IPV6_V6ONLY: beside pc4
		return err
	}); err != nil {
		if pc4 != nil {
			pc4.Close()
		}
		t.Fatalf("udp server %s on %s:%d: %v", name, n.Name, port, err)
	}
	p4, p6 := ipv4.NewPacketConn(pc4), ipv6.NewPacketConn(pc6)
	if err := errors.Join(p4.SetControlMessage(ipv4.FlagDst, true), p6.SetControlMessage(ipv6.FlagDst, true)); err != nil {
		t.Fatalf("udp server %s: IP_PKTINFO: %v", name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc4.Close()
		pc6.Close()
		wg.Wait()
	})
	wg.Go(func() { answerUDP(udpFamily{pc4.(*net.UDPConn), dst4, source4}, name) })
	wg.Go(func() { answerUDP(udpFamily{pc6.(*net.UDPConn), dst6, source6}, name) })
}

// udpFamily is a UDP socket of one family with that family's packet info codec.
type udpFamily struct {
	conn *net.UDPConn
	// dst is the destination address in a datagram's packet info (nil if none).
	dst func(oob []byte) net.IP
	// source is the packet info that sends from src (none for nil).
	source func(src net.IP) []byte
}

func dst4(oob []byte) net.IP {
	var cm ipv4.ControlMessage
	_ = cm.Parse(oob)
	return cm.Dst
}

func dst6(oob []byte) net.IP {
	var cm ipv6.ControlMessage
	_ = cm.Parse(oob)
	return cm.Dst
}

func source4(src net.IP) []byte { return (&ipv4.ControlMessage{Src: src}).Marshal() }
func source6(src net.IP) []byte { return (&ipv6.ControlMessage{Src: src}).Marshal() }

// answerUDP answers every datagram read from f with name, from the address it was sent to, until
// reading fails (the socket closed).
func answerUDP(f udpFamily, name string) {
	buf, oob := make([]byte, 2048), make([]byte, 512)
	for {
		_, oobn, _, from, err := f.conn.ReadMsgUDP(buf, oob)
		if err != nil {
			return
		}
		_, _, _ = f.conn.WriteMsgUDP([]byte(name), f.source(f.dst(oob[:oobn])), from)
	}
}

// DialTCP connects from inside the namespace to addr and returns the greeting (the answering
// server's name). The context bounds the whole exchange.
func (n *Netns) DialTCP(ctx context.Context, addr string) (string, error) {
	var c net.Conn
	if err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// UDPClient is a UDP socket opened inside a namespace and kept, as a client that reuses its socket
// (a DogStatsD client, say) does.
type UDPClient struct {
	conn *net.UDPConn
}

// DialUDP opens a connected UDP socket from inside the namespace to addr. Close it when done.
func (n *Netns) DialUDP(addr string) (*UDPClient, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	var c *net.UDPConn
	if err := n.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, raddr)
		return err
	}); err != nil {
		return nil, err
	}
	return &UDPClient{conn: c}, nil
}

// Exchange sends one datagram and waits for one answer until the context ends; it returns the
// answering server's name.
func (u *UDPClient) Exchange(ctx context.Context) (string, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Second)
	}
	if err := u.conn.SetDeadline(dl); err != nil {
		return "", err
	}
	if _, err := u.conn.Write([]byte("ping")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	m, err := u.conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:m]), nil
}

// Close closes the socket.
func (u *UDPClient) Close() error { return u.conn.Close() }

// ExchangeUDP sends one datagram from a fresh socket inside the namespace and returns the answer.
func (n *Netns) ExchangeUDP(ctx context.Context, addr string) (string, error) {
	u, err := n.DialUDP(addr)
	if err != nil {
		return "", err
	}
	defer u.Close()
	return u.Exchange(ctx)
}

// Outcome classifies a dial result for assertions: "answered", "refused", "timeout",
// "unreachable" or "error: ...".
func Outcome(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "answered"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "error: " + err.Error()
	}
}

// connSet tracks open connections so a server can close them on shutdown.
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func newConnSet() *connSet { return &connSet{m: map[net.Conn]struct{}{}} }

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
	c.Close()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		c.Close()
	}
}

// HTTPClient returns a client whose connections are opened inside the namespace.
func (n *Netns) HTTPClient(timeout time.Duration) *http.Client {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = n.Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}
