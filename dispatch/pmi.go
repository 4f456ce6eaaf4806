package dispatch

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/gocoll/gocoll/internal/pmi"
	"github.com/gocoll/gocoll/store"
)

// EnvPMI says whether and how Init uses the launcher's PMI connection:
// "auto" or unset (PMI-2 where the launcher offers PMI and Init needs
// it), "2", "1" (that protocol version), or "off".
const EnvPMI = "GOCOLL_PMI"

// Under MPICH's hydra (mpiexec) and srun --mpi=pmi2 every rank has a PMI
// connection to the launcher (PMI_FD, or PMI_PORT with PMI_ID) and, with
// it, a key-value space private to the job. When MASTER_ADDR and
// MASTER_PORT, or GOCOLL_SECRET, are missing, Init meets the other ranks
// there first: rank 0 binds a free port for the store (on 127.0.0.1 when
// the launcher says every rank shares its node, else on every interface,
// advertising its host's address, or MASTER_ADDR if set), makes a fresh
// secret, and puts both in the job's space; after the launcher's fence
// the others read them. Then `mpiexec -n 4 ./prog` and
// `srun --mpi=pmi2 -n 4 ./prog` need nothing exported.
//
// The secret is exactly as private as the launcher's key-value space: an
// inherited socket (PMI_FD: hydra's default, and Slurm's) reaches no one
// else, but hydra's -pmi-port serves the space on a TCP port that
// anyone who can reach it may read.
//
// Each rank finalizes PMI at the end of Init, because hydra takes a PMI
// connection closed without finalize for a crash and kills the job; so
// a process meets through PMI once, and a later Init in the same process
// needs the variables set.

// pmiClaimed makes PMI single use per process: the inherited descriptor
// is closed after the first use, and its number may since name another
// file.
var pmiClaimed atomic.Bool

// pmiVersion reads GOCOLL_PMI: 0 for off, else the protocol version.
func pmiVersion(env envLookup) (int, error) {
	v, _ := env(EnvPMI)
	switch strings.TrimSpace(v) {
	case "", "auto", "2":
		return 2, nil
	case "1":
		return 1, nil
	case "off", "0":
		return 0, nil
	}
	return 0, fmt.Errorf("dispatch: %s=%q: want auto, 2, 1 or off", EnvPMI, v)
}

// pmiConnect opens and initializes this process's PMI connection, once.
func pmiConnect(ctx context.Context, env envLookup, version int) (*pmi.Client, error) {
	if !pmiClaimed.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("dispatch: this process already used the launcher's PMI connection, which serves one Init "+
			"per process; to Init again set MASTER_ADDR, MASTER_PORT and %s on every rank", EnvSecret)
	}
	pc, err := pmi.Connect(ctx, pmi.Env(env), version)
	if err != nil {
		return nil, fmt.Errorf("dispatch: meeting the other ranks through the launcher's PMI "+
			"(set MASTER_ADDR, MASTER_PORT and %s to do without, or %s=1 to try PMI-1): %w", EnvSecret, EnvPMI, err)
	}
	return pc, nil
}

// pmiPreconnect serves hydra's -pmi-port mode, where the launcher sets
// PMI_PORT and PMI_ID but not PMI_RANK and PMI_SIZE: only the PMI
// handshake tells the rank and size. It connects, and returns an
// environment that adds them for resolve; with nothing to do it returns
// env and a nil client.
func pmiPreconnect(ctx context.Context, o *options, env envLookup) (envLookup, *pmi.Client, error) {
	_, port := env("PMI_PORT")
	_, id := env("PMI_ID")
	_, rank := env("PMI_RANK")
	if !port || !id || rank || o.rank != nil {
		return env, nil, nil
	}
	for _, c := range conventions {
		if _, ok := env(c.rank); ok {
			return env, nil, nil // an inner launcher's variables win (see conventions)
		}
	}
	v, err := pmiVersion(env)
	if err != nil || v == 0 {
		return env, nil, err
	}
	timeout := DefaultTimeout
	if o.timeout > 0 {
		timeout = o.timeout
	} else if s, ok := env(EnvTimeout); ok {
		if d, err := parseTimeout(s); err == nil {
			timeout = d
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pc, err := pmiConnect(ctx, env, v)
	if err != nil {
		return nil, nil, err
	}
	r, s := strconv.Itoa(pc.Rank()), strconv.Itoa(pc.Size())
	return func(k string) (string, bool) {
		switch k {
		case "PMI_RANK":
			return r, true
		case "PMI_SIZE":
			return s, true
		}
		return env(k)
	}, pc, nil
}

// Keys in the job's PMI space.
const (
	pmiKeyStore  = "gocoll-store"
	pmiKeySecret = "gocoll-secret"
)

// pmiRendezvous learns through PMI what resolve left to it (l.pmi): the
// store's address, the secret, or both. Rank 0 serves the store here
// when it picks the address, and connect then dials it. pc is the
// client pmiPreconnect opened, or nil. The connection is finalized
// before it returns, whatever happens, so that the launcher takes this
// process's exit for a normal one.
func (c *Comm) pmiRendezvous(ctx context.Context, l *launch, env envLookup, pc *pmi.Client, log *slog.Logger) (err error) {
	if l.pmi == 0 {
		if pc != nil {
			if err := pc.Finalize(ctx); err != nil {
				return fmt.Errorf("dispatch: rank %d: finalizing the launcher's PMI: %w", l.rank, err)
			}
		}
		return nil
	}
	if pc == nil {
		if pc, err = pmiConnect(ctx, env, l.pmi); err != nil {
			return err
		}
	}
	defer func() {
		if ferr := pc.Finalize(ctx); ferr != nil && err == nil {
			err = fmt.Errorf("dispatch: rank %d: finalizing the launcher's PMI: %w", l.rank, ferr)
		}
	}()
	if pc.Rank() != l.rank || pc.Size() != l.size {
		return fmt.Errorf("dispatch: the launcher's PMI says rank %d of %d, but %s says rank %d of %d: "+
			"the variables come from another launch", pc.Rank(), pc.Size(), l.source, l.rank, l.size)
	}
	wrap := func(what string, err error) error {
		return fmt.Errorf("dispatch: rank %d: %s through the launcher's PMI (protocol %d): %w", l.rank, what, pc.Version(), err)
	}
	if l.rank == 0 {
		if l.pmiSecret {
			c.secret = randomBytes(32)
		}
		if l.pmiMaster {
			addr, serr := c.pmiServe(ctx, l, env, log)
			if serr != nil {
				// Tell the others, so that they fail now rather than at
				// the timeout; PMI values cannot hold spaces, hence hex.
				addr = pmiFailed + hex.EncodeToString([]byte(serr.Error()))
			}
			if err := pc.Put(ctx, pmiKeyStore, clipValue(addr)); err != nil {
				return wrap("publishing the store's address", err)
			}
			if serr != nil {
				if err := pc.Fence(ctx); err != nil {
					return fmt.Errorf("%w (and telling the others: %v)", serr, err)
				}
				return serr
			}
			l.master = addr
		}
		if l.pmiSecret {
			if err := pc.Put(ctx, pmiKeySecret, hex.EncodeToString(c.secret)); err != nil {
				return wrap("publishing the job secret", err)
			}
		}
	}
	if err := pc.Fence(ctx); err != nil {
		return wrap("waiting for the other ranks", err)
	}
	if l.rank == 0 {
		return nil
	}
	if l.pmiMaster {
		v, ok, err := pc.Get(ctx, pmiKeyStore)
		if err != nil {
			return wrap("reading the store's address", err)
		}
		if !ok {
			return fmt.Errorf("dispatch: rank %d: rank 0 published no store address through the launcher's PMI: "+
				"does it have MASTER_ADDR and MASTER_PORT set? Set them on every rank or on none", l.rank)
		}
		if msg, failed := strings.CutPrefix(v, pmiFailed); failed {
			b, _ := hex.DecodeString(msg)
			return fmt.Errorf("dispatch: rank %d: rank 0 failed: %s", l.rank, b)
		}
		l.master = v
	}
	if l.pmiSecret {
		v, ok, err := pc.Get(ctx, pmiKeySecret)
		if err != nil {
			return wrap("reading the job secret", err)
		}
		if !ok {
			return fmt.Errorf("dispatch: rank %d: rank 0 published no secret through the launcher's PMI: "+
				"does it have %s set? Set it on every rank or on none", l.rank, EnvSecret)
		}
		if c.secret, err = hex.DecodeString(v); err != nil || len(c.secret) == 0 {
			return fmt.Errorf("dispatch: rank %d: the secret in the launcher's PMI space is not hex: is another program using %q?", l.rank, pmiKeySecret)
		}
	}
	return nil
}

// pmiFailed starts the store's address in the PMI space when rank 0
// could not serve it; the hex of its error follows.
const pmiFailed = "failed:"

// clipValue keeps a value within PMI's 1024 bytes.
func clipValue(v string) string {
	if len(v) > 1024 {
		return v[:1024]
	}
	return v
}

// pmiServe has rank 0 serve the store where pmiStoreHost says, and
// returns the address to advertise.
func (c *Comm) pmiServe(ctx context.Context, l *launch, env envLookup, log *slog.Logger) (string, error) {
	host, listen, err := pmiStoreHost(ctx, l, env)
	if err != nil {
		return "", err
	}
	port := l.pmiPort
	if port == "" {
		port = "0"
	}
	srv, err := store.Listen(net.JoinHostPort(listen, port), c.secret, store.WithLogger(log))
	if err != nil {
		return "", fmt.Errorf("dispatch: rank 0 cannot serve the store: %w", err)
	}
	c.server = srv
	_, p, _ := net.SplitHostPort(srv.Addr())
	return net.JoinHostPort(host, p), nil
}

// pmiStoreHost picks where rank 0 serves the store: the host it
// advertises and the address it listens on. MASTER_ADDR, if set, is
// both (as without PMI); a job on one node uses loopback; otherwise rank
// 0 listens on every interface and advertises its host's address.
func pmiStoreHost(ctx context.Context, l *launch, env envLookup) (host, listen string, err error) {
	if h := l.pmiHost; h != "" {
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() || h == "localhost" {
			return h, h, nil
		}
		return h, "", nil
	}
	if pmiOneNode(l, env) {
		return "127.0.0.1", "127.0.0.1", nil
	}
	h, err := hostAddress(ctx)
	if err != nil {
		return "", "", fmt.Errorf("dispatch: rank 0 cannot tell the others where its store is: %w; set MASTER_ADDR to an address of rank 0's host", err)
	}
	return h, "", nil
}

// pmiOneNode reports whether the launcher says every rank shares this
// node: hydra's MPI_LOCALNRANKS, or srun's SLURM_STEP_NUM_NODES.
func pmiOneNode(l *launch, env envLookup) bool {
	if l.localSize == l.size {
		return true
	}
	if slurmStep(l, env) {
		if n, ok, err := intVar(env, "SLURM_STEP_NUM_NODES"); err == nil && ok {
			return n == 1
		}
	}
	return false
}

// hostAddress is an address of this host that other nodes can likely
// reach: the first non-loopback address its hostname resolves to (what
// an administrator named it by), else the address of the interface
// that holds the default route, else any non-loopback unicast address.
// IPv4 is preferred at each step.
func hostAddress(ctx context.Context) (string, error) {
	if name, err := os.Hostname(); err == nil {
		if ips, err := net.DefaultResolver.LookupIP(ctx, "ip", name); err == nil {
			if ip := pickIP(ips); ip != nil {
				return ip.String(), nil
			}
		}
	}
	if name := defaultRouteInterface(); name != "" {
		if ifc, err := net.InterfaceByName(name); err == nil {
			if ip := pickIP(interfaceIPs(ifc)); ip != nil {
				return ip.String(), nil
			}
		}
	}
	ifcs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("listing network interfaces: %w", err)
	}
	var ips []net.IP
	for i := range ifcs {
		if ifcs[i].Flags&net.FlagUp != 0 && ifcs[i].Flags&net.FlagLoopback == 0 {
			ips = append(ips, interfaceIPs(&ifcs[i])...)
		}
	}
	if ip := pickIP(ips); ip != nil {
		return ip.String(), nil
	}
	return "", fmt.Errorf("this host has no non-loopback address")
}

// pickIP returns the first global unicast IPv4 address of ips, else the
// first global unicast IPv6 one, else nil.
func pickIP(ips []net.IP) net.IP {
	var v6 net.IP
	for _, ip := range ips {
		if !ip.IsGlobalUnicast() {
			continue
		}
		if ip.To4() != nil {
			return ip
		}
		if v6 == nil {
			v6 = ip
		}
	}
	return v6
}

func interfaceIPs(ifc *net.Interface) []net.IP {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

// defaultRouteInterface names the interface of the IPv4 default route,
// from /proc/net/route; "" if there is none.
func defaultRouteInterface() string {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return ""
	}
	defer f.Close()
	return parseDefaultRoute(f)
}

// parseDefaultRoute reads /proc/net/route's table: the interface whose
// destination and mask are both zero.
func parseDefaultRoute(r io.Reader) string {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 8 && fields[1] == "00000000" && fields[7] == "00000000" {
			return fields[0]
		}
	}
	return ""
}
