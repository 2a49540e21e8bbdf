package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// runEcho serves the echo line on TCP (and UDP when --udp-port is set) until ctx ends.
func runEcho(ctx context.Context, log *slog.Logger, args []string) error {
	fs := newFlagSet("echo")
	tcpPort := fs.Int("tcp-port", 8080, "TCP port to answer on (all addresses)")
	udpPort := fs.Int("udp-port", 0, "UDP port to answer on (0: no UDP)")
	readCaller := fs.Bool("read-caller", false, "over TCP, first read one line from the caller (within 1 s; e.g. the identity a probe --caller sends) and add it to the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	id := identity{pod: envOr("POD_NAME", "-"), node: envOr("NODE_NAME", "-"), readCaller: *readCaller}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", *tcpPort))
	if err != nil {
		return fmt.Errorf("listen on TCP port %d: %w", *tcpPort, err)
	}
	var pc net.PacketConn
	if *udpPort != 0 {
		if pc, err = lc.ListenPacket(ctx, "udp", fmt.Sprintf(":%d", *udpPort)); err != nil {
			ln.Close()
			return fmt.Errorf("listen on UDP port %d: %w", *udpPort, err)
		}
	}
	udpAddr := ""
	if pc != nil {
		udpAddr = pc.LocalAddr().String()
	}
	log.Info("echo serving", "tcp", ln.Addr().String(), "udpAddr", udpAddr, "pod", id.pod, "node", id.node)
	return serveEcho(ctx, log, id, ln, pc)
}

// identity is who answers: the pod and node names from the downward API; readCaller: read the
// caller's line first (TCP) and answer "<pod> <node> <peer ip> <caller line>".
type identity struct {
	pod, node  string
	readCaller bool
}

// line is the answer to a peer: "<pod> <node> <peer ip>\n".
func (id identity) line(peer net.Addr) []byte {
	return fmt.Appendf(nil, "%s %s %s\n", id.pod, id.node, peerIP(peer))
}

// peerIP is the peer's address without port, an IPv4-mapped IPv6 address shown as IPv4.
func peerIP(a net.Addr) string {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		return a.String()
	}
	return ap.Addr().Unmap().String()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// serveEcho answers on ln and pc (nil: no UDP) until ctx ends, then closes them.
func serveEcho(ctx context.Context, log *slog.Logger, id identity, ln net.Listener, pc net.PacketConn) error {
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- acceptLoop(ctx, log, id, ln) })
	if pc != nil {
		wg.Go(func() { errs <- udpLoop(ctx, id, pc) })
	}
	<-ctx.Done()
	ln.Close()
	if pc != nil {
		pc.Close()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// acceptLoop writes the line to each TCP connection and closes it. It returns nil once ctx has
// ended (the listener is then closed), the error otherwise.
func acceptLoop(ctx context.Context, log *slog.Logger, id identity, ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		if id.readCaller {
			go answerCaller(log, id, c)
			continue
		}
		if _, err := c.Write(id.line(c.RemoteAddr())); err != nil {
			log.Info("write failed", "peer", c.RemoteAddr().String(), "err", err)
		}
		c.Close()
	}
}

// answerCaller reads the caller's line (at most 256 bytes, within 1 s; "-" when none) and
// answers "<pod> <node> <peer ip> <caller line>".
func answerCaller(log *slog.Logger, id identity, c net.Conn) {
	defer c.Close()
	caller := "-"
	if err := c.SetReadDeadline(time.Now().Add(time.Second)); err == nil {
		if line, err := bufio.NewReader(io.LimitReader(c, 256)).ReadString('\n'); err == nil && strings.TrimSpace(line) != "" {
			caller = strings.TrimSpace(line)
		}
	}
	answer := append(bytes.TrimSuffix(id.line(c.RemoteAddr()), []byte("\n")), " "+caller+"\n"...)
	if _, err := c.Write(answer); err != nil {
		log.Info("write failed", "peer", c.RemoteAddr().String(), "err", err)
	}
}

// udpLoop replies the line to each datagram.
func udpLoop(ctx context.Context, id identity, pc net.PacketConn) error {
	buf := make([]byte, 2048)
	for {
		_, peer, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read on UDP %s: %w", pc.LocalAddr(), err)
		}
		// A failed reply (the peer went away) is the peer's loss: keep serving the others.
		_, _ = pc.WriteTo(id.line(peer), peer)
	}
}
