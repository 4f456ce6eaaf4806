package shm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/core"
)

// The workspace is an anonymous memfd: it never has a name in /dev/shm, so
// no crash at any moment can leave a segment behind, and no segment of an
// earlier job can be mistaken for this one's. Rank 0 creates it, reserves
// its pages with fallocate (so that a shortage is an error here, never a
// SIGBUS later), seals its size, and hands the descriptor to each local peer
// over a unix socket in the abstract namespace (which also vanishes with
// its last user). The socket's name carries the job id and a random nonce;
// a peer proves it is part of the job with a token only the job's store
// holds, and the kernel tells rank 0 each peer's pid and uid.

const addrKey = "shm/addr"

// hello is what a peer sends rank 0.
type hello struct {
	Rank  int    `json:"rank"`
	Token string `json:"token"`
}

// welcome is what rank 0 sends back, with the memfd attached.
type welcome struct {
	Pids []int `json:"pids"`
}

// rendezvous is the store record rank 0 publishes.
type rendezvous struct {
	Socket string `json:"socket"`
	Token  string `json:"token"`
}

// segment is a mapped workspace.
type segment struct {
	mem  []byte
	pids []int // pid of every rank as this process sees it
}

// createMemfd makes and maps a sealed, fully reserved memfd of size bytes.
func createMemfd(jobID string, size int) (int, []byte, error) {
	// Reserving more than the machine (or this cgroup) can give would make
	// fallocate push the system into reclaim and the OOM killer before it
	// fails: refuse such sizes up front.
	if avail, what := availableMemory(); avail > 0 && uint64(size) > avail {
		return -1, nil, fmt.Errorf("shm: the shared-memory workspace needs %d bytes (%.1f MiB) but %s has only %d bytes (%.1f MiB) available; "+
			"lower shm.WithBufferSize/WithHeapSize or give the job more memory", size, float64(size)/(1<<20), what, avail, float64(avail)/(1<<20))
	}
	fd, err := unix.MemfdCreate("gocoll-shm-"+sanitize(jobID), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, nil, fmt.Errorf("shm: memfd_create: %w (Linux 3.17 or later is needed)", err)
	}
	fail := func(err error) (int, []byte, error) {
		unix.Close(fd)
		return -1, nil, err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(fmt.Errorf("shm: sizing the %d-byte workspace: %w", size, err))
	}
	if err := unix.Fallocate(fd, 0, 0, int64(size)); err != nil {
		return fail(fmt.Errorf("shm: cannot reserve the shared-memory workspace: %d bytes (%.1f MiB) are needed and the kernel refused them: %w; "+
			"lower shm.WithBufferSize/WithHeapSize or raise the memory limit of this container or cgroup", size, float64(size)/(1<<20), err))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail(fmt.Errorf("shm: sealing the workspace: %w", err))
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fail(fmt.Errorf("shm: mapping the %d-byte workspace: %w", size, err))
	}
	return fd, mem, nil
}

// mapPeerMemfd maps a workspace received from rank 0 after checking that
// its size cannot change under us (a shrink would make accesses SIGBUS).
func mapPeerMemfd(fd int) ([]byte, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("shm: reading the workspace's seals: %w", err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, errors.New("shm: the workspace received from rank 0 is not sealed against shrinking")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: fstat of the workspace: %w", err)
	}
	if st.Size < headerSize {
		return nil, fmt.Errorf("shm: the workspace received from rank 0 has only %d bytes", st.Size)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("shm: mapping the %d-byte workspace: %w", st.Size, err)
	}
	return mem, nil
}

// availableMemory returns the bytes this process could still allocate
// (MemAvailable, or the cgroup v2 limit's headroom if smaller), 0 if unknown.
func availableMemory() (uint64, string) {
	var avail uint64
	what := "the machine"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
				var kb uint64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb)
				avail = kb << 10
			}
		}
	}
	lim, err1 := os.ReadFile("/sys/fs/cgroup/memory.max")
	cur, err2 := os.ReadFile("/sys/fs/cgroup/memory.current")
	if err1 == nil && err2 == nil {
		var l, c uint64
		if _, err := fmt.Sscan(string(lim), &l); err == nil {
			fmt.Sscan(string(cur), &c)
			if l > c && (avail == 0 || l-c < avail) {
				avail, what = l-c, "this cgroup (memory.max)"
			}
		}
	}
	return avail, what
}

func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
	if len(s) > 48 {
		s = s[:48]
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// setupRoot creates the workspace and hands it to the peers.
func setupRoot(ctx context.Context, g core.Group, lay layout) (*segment, error) {
	fd, mem, err := createMemfd(g.JobID, lay.total)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd) // the mappings keep the memory alive
	h := lay.header()
	var nonce [32]byte
	rand.Read(nonce[:])
	for i := range h.nonce {
		h.nonce[i] = binary.LittleEndian.Uint64(nonce[8*i:])
	}
	*(*header)(unsafe.Pointer(&mem[0])) = h
	seg := &segment{mem: mem, pids: make([]int, g.Size)}
	seg.pids[0] = os.Getpid()
	if g.Size == 1 {
		return seg, nil
	}
	if err := serveMemfd(ctx, g, fd, seg); err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return seg, nil
}

func serveMemfd(ctx context.Context, g core.Group, fd int, seg *segment) error {
	name := "@gocoll-shm-" + sanitize(g.JobID) + "-" + randomHex(8)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: name, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("shm: listening on abstract unix socket %q: %w", name, err)
	}
	defer ln.Close()
	token := randomHex(32)
	rv, _ := json.Marshal(rendezvous{Socket: name, Token: token})
	if err := g.Store.Set(ctx, addrKey, rv); err != nil {
		return fmt.Errorf("shm: publishing the workspace's socket in the store: %w", err)
	}
	defer g.Store.Delete(context.WithoutCancel(ctx), addrKey)
	if dl, ok := ctx.Deadline(); ok {
		ln.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { ln.SetDeadline(time.Now()) })
	defer stop()

	conns := make([]*net.UnixConn, g.Size)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	uid := os.Getuid()
	for joined := 1; joined < g.Size; {
		c, err := ln.AcceptUnix()
		if err != nil {
			err = ctxCause(ctx, err)
			var missing []int
			for r := 1; r < g.Size; r++ {
				if conns[r] == nil {
					missing = append(missing, r)
				}
			}
			return &core.PeerError{Op: "shm setup", Ranks: missing, Err: fmt.Errorf("waiting for local ranks to connect: %w", err)}
		}
		r, pid, err := admit(c, token, uid, g.Size)
		if err != nil || conns[r] != nil {
			// A stranger or a duplicate: drop it and keep waiting for the job's ranks.
			c.Close()
			continue
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		conns[r] = c
		seg.pids[r] = pid
		joined++
	}
	msg, _ := json.Marshal(welcome{Pids: seg.pids})
	for r := 1; r < g.Size; r++ {
		if _, _, err := conns[r].WriteMsgUnix(msg, unix.UnixRights(fd), nil); err != nil {
			return &core.PeerError{Op: "shm setup", Ranks: []int{r}, Err: fmt.Errorf("sending the workspace: %w", err)}
		}
	}
	// Wait until every peer has mapped it: only then may a rank start a
	// collective, and only then may this rank give up its descriptor.
	for r := 1; r < g.Size; r++ {
		var b [64]byte
		n, err := conns[r].Read(b[:])
		if err != nil || string(b[:n]) != "ok" {
			if err == nil {
				err = errors.New(string(b[:n]))
			}
			return &core.PeerError{Op: "shm setup", Ranks: []int{r}, Err: fmt.Errorf("rank did not map the workspace: %w", err)}
		}
	}
	return nil
}

// admit reads a peer's hello and checks it belongs to the job.
func admit(c *net.UnixConn, token string, uid, size int) (rank, pid int, err error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var cred *unix.Ucred
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	if int(cred.Uid) != uid {
		return 0, 0, fmt.Errorf("peer uid %d is not ours", cred.Uid)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return 0, 0, err
	}
	var h hello
	if err := json.Unmarshal(buf[:n], &h); err != nil {
		return 0, 0, err
	}
	if subtle.ConstantTimeCompare([]byte(h.Token), []byte(token)) != 1 || h.Rank < 1 || h.Rank >= size {
		return 0, 0, errors.New("bad hello")
	}
	return h.Rank, int(cred.Pid), nil
}

// setupPeer fetches the workspace from rank 0.
func setupPeer(ctx context.Context, g core.Group) (*segment, error) {
	raw, err := g.Store.Get(ctx, addrKey)
	if err != nil {
		return nil, &core.PeerError{Op: "shm setup", Ranks: []int{0}, Err: fmt.Errorf("waiting for rank 0 to publish the workspace: %w", err)}
	}
	var rv rendezvous
	if err := json.Unmarshal(raw, &rv); err != nil {
		return nil, fmt.Errorf("shm: bad rendezvous record %q in the store: %w", raw, err)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", rv.Socket)
	if err != nil {
		return nil, &core.PeerError{Op: "shm setup", Ranks: []int{0}, Err: fmt.Errorf("connecting to rank 0's socket %q (ranks of one shm group must share a host and network namespace): %w", rv.Socket, err)}
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var rootPid int
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			rootPid = int(cred.Pid)
		}
	})
	msg, _ := json.Marshal(hello{Rank: g.Rank, Token: rv.Token})
	if _, err := c.Write(msg); err != nil {
		return nil, &core.PeerError{Op: "shm setup", Ranks: []int{0}, Err: fmt.Errorf("greeting rank 0: %w", err)}
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		err = ctxCause(ctx, err)
		return nil, &core.PeerError{Op: "shm setup", Ranks: []int{0}, Err: fmt.Errorf("receiving the workspace: %w", err)}
	}
	fd, err := parseFD(oob[:oobn])
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var w welcome
	if err := json.Unmarshal(buf[:n], &w); err != nil || len(w.Pids) != g.Size {
		return nil, fmt.Errorf("shm: bad workspace message from rank 0 (%d pids for %d ranks): %v", len(w.Pids), g.Size, err)
	}
	mem, err := mapPeerMemfd(fd)
	if err != nil {
		c.Write([]byte(err.Error()))
		return nil, err
	}
	seg := &segment{mem: mem, pids: w.Pids}
	if rootPid != 0 {
		seg.pids[0] = rootPid
	}
	seg.pids[g.Rank] = os.Getpid()
	if _, err := c.Write([]byte("ok")); err != nil {
		unix.Munmap(mem)
		return nil, &core.PeerError{Op: "shm setup", Ranks: []int{0}, Err: fmt.Errorf("confirming the mapping: %w", err)}
	}
	return seg, nil
}

func parseFD(oob []byte) (int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, fmt.Errorf("shm: parsing the control message from rank 0: %w", err)
	}
	fd := -1
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, f := range fds {
			if fd < 0 {
				fd = f
			} else {
				unix.Close(f)
			}
		}
	}
	if fd < 0 {
		return -1, errors.New("shm: rank 0's message carried no file descriptor")
	}
	return fd, nil
}

// ctxCause reports a socket error caused by the context (whose deadline
// the socket carries) as the context's error, so that callers can test for
// context.DeadlineExceeded.
func ctxCause(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return err
}
