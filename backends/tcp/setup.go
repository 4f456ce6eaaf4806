package tcp

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Connection roles: every pair of ranks has a data connection (collective
// payloads) and a control connection (aborts and goodbyes), so that news of
// a failure is never stuck behind a payload the receiver is not reading.
const (
	connData = 1
	connCtl  = 2
)

// handshakeMagic starts both sides' first message and names the protocol
// version.
var handshakeMagic = [8]byte{'G', 'O', 'C', 'O', 'L', 'T', 'C', '1'}

const (
	nonceSize    = 32
	macSize      = sha256.Size
	helloSize    = 8 + 4 + nonceSize               // magic, acceptor rank, acceptor nonce
	proofSize    = 8 + 4 + 1 + nonceSize + macSize // magic, dialer rank, role, dialer nonce, mac
	maxHandshake = 10 * time.Second                // one handshake, on top of the setup deadline
)

// mac proves knowledge of the secret for one connection: both nonces, both
// ranks, the role and the job are bound in, so a proof is good for exactly
// one connection and cannot be replayed or reflected (label differs by
// direction).
func mac(secret []byte, label, jobID string, acceptor, dialer int, role byte, na, nd []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("gocoll-tcp " + label + "\x00" + jobID + "\x00"))
	var b [9]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(acceptor))
	binary.LittleEndian.PutUint32(b[4:], uint32(dialer))
	b[8] = role
	m.Write(b[:])
	m.Write(na)
	m.Write(nd)
	return m.Sum(nil)
}

// accepted is a connection a higher rank opened and authenticated.
type accepted struct {
	rank int
	role byte
	conn *net.TCPConn
}

// acceptHandshake authenticates a connection from a dialer. It returns the
// dialer's rank and the connection's role; on any error the caller closes the
// connection without reading anything else from it.
func acceptHandshake(c net.Conn, secret []byte, jobID string, rank, size int) (int, byte, error) {
	var hello [helloSize]byte
	copy(hello[:], handshakeMagic[:])
	binary.LittleEndian.PutUint32(hello[8:], uint32(rank))
	na := hello[12:]
	if _, err := rand.Read(na); err != nil {
		return 0, 0, err
	}
	if _, err := c.Write(hello[:]); err != nil {
		return 0, 0, err
	}
	var proof [proofSize]byte
	if _, err := io.ReadFull(c, proof[:]); err != nil {
		return 0, 0, fmt.Errorf("reading the peer's proof: %w", err)
	}
	if !bytes.Equal(proof[:8], handshakeMagic[:]) {
		return 0, 0, errors.New("the peer does not speak the gocoll tcp protocol")
	}
	dialer := int(int32(binary.LittleEndian.Uint32(proof[8:])))
	role := proof[12]
	nd := proof[13 : 13+nonceSize]
	want := mac(secret, "dial", jobID, rank, dialer, role, na, nd)
	if !hmac.Equal(want, proof[13+nonceSize:]) {
		return 0, 0, errors.New("the peer does not hold the job secret (or belongs to another job)")
	}
	// Only checked after the proof: an outsider learns nothing from it.
	if dialer <= rank || dialer >= size || (role != connData && role != connCtl) {
		return 0, 0, fmt.Errorf("authenticated peer claims rank %d role %d, impossible for rank %d of %d", dialer, role, rank, size)
	}
	if _, err := c.Write(mac(secret, "accept", jobID, rank, dialer, role, na, nd)); err != nil {
		return 0, 0, err
	}
	return dialer, role, nil
}

// errStale: the address read from the store is another rank's now.
var errStale = errors.New("stale address in the store")

// errRefused: the acceptor closed the connection after this rank's proof.
var errRefused = errors.New("the peer refused this rank's proof: does it hold the same job secret?")

// dialHandshake authenticates the connection c to rank peer and proves this
// rank holds the secret.
func dialHandshake(c net.Conn, secret []byte, jobID string, peer, rank int, role byte) error {
	var hello [helloSize]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return fmt.Errorf("reading the peer's greeting: %w", err)
	}
	if !bytes.Equal(hello[:8], handshakeMagic[:]) {
		return errors.New("the address does not answer the gocoll tcp protocol")
	}
	if got := int(int32(binary.LittleEndian.Uint32(hello[8:]))); got != peer {
		return fmt.Errorf("%w: it belongs to rank %d, not rank %d", errStale, got, peer)
	}
	na := hello[12:]
	var proof [proofSize]byte
	copy(proof[:], handshakeMagic[:])
	binary.LittleEndian.PutUint32(proof[8:], uint32(rank))
	proof[12] = role
	nd := proof[13 : 13+nonceSize]
	if _, err := rand.Read(nd); err != nil {
		return err
	}
	copy(proof[13+nonceSize:], mac(secret, "dial", jobID, peer, rank, role, na, nd))
	if _, err := c.Write(proof[:]); err != nil {
		return err
	}
	var reply [macSize]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return fmt.Errorf("%w: %v", errRefused, err)
	}
	if !hmac.Equal(reply[:], mac(secret, "accept", jobID, peer, rank, role, na, nd)) {
		return errors.New("the peer does not hold the job secret")
	}
	return nil
}

// listenHost picks the address to listen on: an explicit address, else the
// interface's first address, else this host's name if it resolves to a local
// address, else the first non-loopback address, else loopback.
func listenHost(cfg *config) (string, error) {
	if cfg.addr != "" {
		return cfg.addr, nil
	}
	if cfg.ifname != "" {
		ifi, err := net.InterfaceByName(cfg.ifname)
		if err != nil {
			return "", fmt.Errorf("tcp: interface %q (%s or WithInterface): %w", cfg.ifname, EnvSocketIfname, err)
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return "", fmt.Errorf("tcp: addresses of interface %q: %w", cfg.ifname, err)
		}
		var v6 string
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ipn.IP.To4() != nil {
					return ipn.IP.String(), nil
				}
				if v6 == "" && !ipn.IP.IsLinkLocalUnicast() {
					v6 = ipn.IP.String()
				}
			}
		}
		if v6 != "" {
			return v6, nil
		}
		return "", fmt.Errorf("tcp: interface %q (%s or WithInterface) has no usable IP address", cfg.ifname, EnvSocketIfname)
	}
	local := map[string]bool{}
	var first string
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagUp == 0 {
				continue
			}
			addrs, _ := ifi.Addrs()
			for _, a := range addrs {
				ipn, ok := a.(*net.IPNet)
				if !ok || ipn.IP.IsLoopback() || ipn.IP.To4() == nil {
					continue
				}
				local[ipn.IP.String()] = true
				if first == "" {
					first = ipn.IP.String()
				}
			}
		}
	}
	if h, err := os.Hostname(); err == nil {
		if ips, err := net.LookupHost(h); err == nil {
			for _, ip := range ips {
				if local[ip] {
					return ip, nil
				}
			}
		}
	}
	if first != "" {
		return first, nil
	}
	return "127.0.0.1", nil
}

// kernelMax reads a net.core sysctl (bytes), or 0 when it cannot.
func kernelMax(name string) int {
	b, err := os.ReadFile("/proc/sys/net/core/" + name)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// tune sets the data connection's socket options: no Nagle delay (frames
// are written whole, vectored), and the configured kernel buffers where
// the kernel allows them.
func tune(c *net.TCPConn, snd, rcv int) {
	_ = c.SetNoDelay(true)
	if snd > 0 && kernelMax("wmem_max") >= snd {
		_ = c.SetWriteBuffer(snd)
	}
	if rcv > 0 && kernelMax("rmem_max") >= rcv {
		_ = c.SetReadBuffer(rcv)
	}
}

// connect builds the full mesh: rank r accepts from every higher rank and
// dials every lower one, two connections per pair. It returns, for every
// other rank, its data and control connections.
func connect(ctx context.Context, g core.Group, cfg *config, deadline time.Time, logf func(string, ...any)) (data, ctl []*net.TCPConn, rejected *atomic.Int64, err error) {
	host, err := listenHost(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(host)})
	if err != nil && net.ParseIP(host) == nil {
		// A host name: resolve it.
		var a *net.TCPAddr
		if a, err = net.ResolveTCPAddr("tcp", net.JoinHostPort(host, "0")); err == nil {
			ln, err = net.ListenTCP("tcp", a)
		}
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tcp: rank %d cannot listen on %s (choose another with %s, %s or WithAddress): %w", g.Rank, host, EnvSocketIfname, EnvSocketAddr, err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	if err := g.Store.Set(ctx, "addr/"+strconv.Itoa(g.Rank), []byte(addr)); err != nil {
		return nil, nil, nil, fmt.Errorf("tcp: rank %d publishing its address: %w", g.Rank, err)
	}

	n := g.Size
	data = make([]*net.TCPConn, n)
	ctl = make([]*net.TCPConn, n)
	rejected = new(atomic.Int64)
	closeAll := func() {
		for _, cs := range [][]*net.TCPConn{data, ctl} {
			for _, c := range cs {
				if c != nil {
					c.Close()
				}
			}
		}
	}

	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	// Accept: every connection is authenticated in its own goroutine, so
	// that a silent or hostile one cannot hold up the others.
	acc := make(chan accepted)
	var (
		hsMu   sync.Mutex
		hsOpen = map[*net.TCPConn]bool{}
		hsWG   sync.WaitGroup
	)
	hsWG.Add(1)
	go func() {
		defer hsWG.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			hsMu.Lock()
			hsOpen[c] = true
			hsMu.Unlock()
			hsWG.Add(1)
			go func() {
				defer hsWG.Done()
				_ = c.SetDeadline(earliest(deadline, time.Now().Add(maxHandshake)))
				peer, role, err := acceptHandshake(c, g.Secret, g.JobID, g.Rank, n)
				hsMu.Lock()
				delete(hsOpen, c)
				hsMu.Unlock()
				if err != nil {
					// Counted before the close, so that whoever sees the
					// connection end also sees it counted.
					rejected.Add(1)
					if logf != nil {
						logf("rank %d dropped a connection from %s: %v", g.Rank, c.RemoteAddr(), err)
					}
					c.Close()
					return
				}
				_ = c.SetDeadline(time.Time{})
				select {
				case acc <- accepted{peer, role, c}:
				case <-ctx.Done():
					c.Close()
				}
			}()
		}
	}()
	// When connect returns no accept or handshake goroutine is left.
	defer func() {
		cancel()
		ln.Close()
		hsMu.Lock()
		for c := range hsOpen {
			c.Close()
		}
		hsMu.Unlock()
		hsWG.Wait()
	}()

	// Dial: lower ranks, concurrently.
	type dialed struct {
		peer int
		role byte
		conn *net.TCPConn
		err  error
	}
	dials := make(chan dialed, 2*n)
	var dialWG sync.WaitGroup
	for j := 0; j < g.Rank; j++ {
		dialWG.Add(1)
		go func() {
			defer dialWG.Done()
			for _, role := range []byte{connData, connCtl} {
				c, err := dialPeer(ctx, g, cfg, j, role)
				dials <- dialed{j, role, c, err}
			}
		}()
	}

	want := 2 * (n - 1)
	var firstErr error
	var failed []int
	for got := 0; got < want; {
		select {
		case d := <-dials:
			if d.err != nil {
				if firstErr == nil {
					firstErr = d.err
				}
				if !slices.Contains(failed, d.peer) {
					failed = append(failed, d.peer)
				}
				got++
				continue
			}
			if d.role == connData {
				data[d.peer] = d.conn
			} else {
				ctl[d.peer] = d.conn
			}
			got++
		case a := <-acc:
			slot := &data[a.rank]
			if a.role == connCtl {
				slot = &ctl[a.rank]
			}
			if *slot != nil {
				// A retry of a connection this rank already holds: keep the new one.
				(*slot).Close()
			} else {
				got++
			}
			*slot = a.conn
		case <-ctx.Done():
			if firstErr == nil {
				firstErr = fmt.Errorf("no authenticated connection before the deadline (did they start, with the same secret? is %s reachable from them? see %s): %w", addr, EnvSocketIfname, ctx.Err())
			}
			for j := range n {
				if j != g.Rank && (data[j] == nil || ctl[j] == nil) && !slices.Contains(failed, j) {
					failed = append(failed, j)
				}
			}
			got = want
		}
	}
	if firstErr != nil {
		cancel()
		// Wait for the dialers still running (cancel ends them) and close
		// what they made.
		go func() { dialWG.Wait(); close(dials) }()
		for d := range dials {
			if d.conn != nil {
				d.conn.Close()
			}
		}
		closeAll()
		slices.Sort(failed)
		return nil, nil, nil, &core.PeerError{Op: "tcp setup", Ranks: failed, Err: fmt.Errorf("rank %d: %w", g.Rank, firstErr)}
	}
	for j := range n {
		if j != g.Rank {
			tune(data[j], cfg.sndBuf, cfg.rcvBuf)
			_ = ctl[j].SetNoDelay(true)
		}
	}
	return data, ctl, rejected, nil
}

// dialPeer connects to rank peer and authenticates, retrying with backoff
// until ctx ends: the peer may not be listening yet, or a SYN may be lost.
// It reads the peer's address from the store before every attempt, so that
// an address left by an earlier backend under the same keys is replaced by
// the new one as soon as the peer publishes it.
func dialPeer(ctx context.Context, g core.Group, cfg *config, peer int, role byte) (*net.TCPConn, error) {
	backoff := 20 * time.Millisecond
	var last error
	addr := "(unpublished)"
	for attempt := 1; ; attempt++ {
		a, err := g.Store.Get(ctx, "addr/"+strconv.Itoa(peer))
		if err != nil {
			return nil, fmt.Errorf("rank %d never published its address: %w", peer, err)
		}
		addr = string(a)
		d := net.Dialer{Timeout: cfg.connectTimeout}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			tc := c.(*net.TCPConn)
			dl, _ := ctx.Deadline()
			_ = tc.SetDeadline(earliest(dl, time.Now().Add(maxHandshake)))
			stop := context.AfterFunc(ctx, func() { _ = tc.SetDeadline(time.Unix(1, 0)) })
			err = dialHandshake(tc, g.Secret, g.JobID, peer, g.Rank, role)
			stop()
			if err == nil {
				_ = tc.SetDeadline(time.Time{})
				return tc, nil
			}
			tc.Close()
			if ctx.Err() == nil && !isRetryable(err) {
				return nil, fmt.Errorf("rank %d authenticating to rank %d at %s: %w", g.Rank, peer, addr, err)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rank %d connecting to rank %d at %s (%d attempts; check %s and firewalls): %w (last error: %v)", g.Rank, peer, addr, attempt, EnvSocketIfname, ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// isRetryable reports whether a handshake error may go away on a new
// connection (a reset or timeout), as opposed to a wrong secret or peer.
func isRetryable(err error) bool {
	if errors.Is(err, errStale) {
		return true // the peer has not published its new address yet
	}
	if errors.Is(err, errRefused) {
		return false
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded)
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
