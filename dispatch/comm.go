// Package dispatch is gocoll's communicator: Init finds out who this
// process is among whom (from torchrun's, Open MPI's, MPICH's, Intel MPI's
// or Slurm's variables, or options), meets the other ranks through the
// rendezvous store, learns which of them share its node, and picks the
// backend that runs the collectives: shared memory (backends/shm) when
// every rank is on one node, TCP (backends/tcp) otherwise, or the store
// itself (backends/kv) on request.
//
// # Who serves the store
//
// The store listens at MASTER_ADDR:MASTER_PORT, or where rank 0 says
// through the launcher's PMI when those are unset under mpiexec or
// srun --mpi=pmi2. Rank 0 serves it, as in torch, unless the launcher
// already does (gocollrun does, and says so with GOCOLL_LAUNCHER_STORE=1,
// so the store outlives a rank 0 that exits early), torchrun's agent
// serves its own c10d store there (see torchrun.go: then every rank dials
// that store instead), or WithStore hands Init a store to use. Rank 0
// binds the port on every interface, unless MASTER_ADDR is a loopback
// address; the job secret keeps strangers out. A job of one process with no
// MASTER_ADDR serves a private store on 127.0.0.1. Rank 0's Close waits
// (up to the timeout) until every rank has closed, so that no rank loses
// the store while it still needs it.
//
// # The secret
//
// Every store connection proves it holds the job secret (GOCOLL_SECRET or
// WithSecret). gocollrun makes a fresh one per job. Under MPICH's mpiexec
// and srun --mpi=pmi2, rank 0 makes one and shares it, with the store's
// address, through the launcher's PMI (see pmiRendezvous in pmi.go; the
// environment variable EnvPMI). Under mpirun or plain srun nothing sets it
// (under plain srun the store's address and port are derived from
// SLURM_STEP_NODELIST and the job and step ids, but a secret cannot be),
// and Init refuses to start without it rather than run a store anyone on
// the network could write to: pass one, e.g.
// mpirun -x GOCOLL_SECRET=$(openssl rand -hex 16). With WithStore the
// store is already trusted, so rank 0 makes one up for the backends; so
// it does in torchrun's agent store, and under torchrun's other
// rendezvous the secret is derived from the run (see torchrun.go for
// what protects each).
//
// # Timeouts
//
// Every wait (Init, each collective, Barrier) ends after the default
// timeout (WithTimeout, GOCOLL_TIMEOUT, else DefaultTimeout), or sooner
// when its context is cancelled or has an earlier deadline; the backends
// apply the same rule. To wait longer, raise the timeout. A wait that times out
// returns a *core.PeerError naming the ranks that never arrived; it
// leaves ranks out of step, so every later collective on the communicator
// fails too.
package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
	"github.com/gocoll/gocoll/store/c10d"
)

// Comm is a communicator: this process's place in a job, and the backend
// that runs its collectives. It implements core.Comm and core.Starter.
// Collectives on one Comm must be issued in the same order on every rank,
// from one goroutine at a time, blocking (Do) or started (Start, see
// async.go): calls issued from two goroutines at once fail, and so does
// the one in flight (core.ErrConcurrentUse), rather than pair different
// calls across ranks.
type Comm struct {
	rank, size           int
	localRank, localSize int
	nodeRank, numNodes   int
	nodes                [][]int // ranks of each node, by node rank
	kvsAddr              string
	jobID                string
	secret               []byte
	timeout              time.Duration
	log                  *slog.Logger
	shmOpts              []shm.Option

	store  core.Store    // this job's namespace in the store
	live   bool          // this rank holds an ephemeral "alive/<rank>" key in store
	client *store.Client // dialled by Init; nil with WithStore
	agent  *c10d.Client  // torchrun's agent store, dialled by Init (torchrun.go)
	server *store.Server // served by this rank (rank 0 or a lone process)
	// guard runs the backend's calls: the one request check, one call
	// at a time, the failed and closed states.
	guard *core.Guard
	grp   groupState // groups and Shrink: see group.go

	closeOnce sync.Once
	closeErr  error
}

var _ core.Comm = (*Comm)(nil)

// info is what rank 0 tells the others at Init.
type info struct {
	JobID  string `json:"job"`
	KVS    string `json:"kvs"`
	Secret string `json:"secret,omitempty"` // hex; only when rank 0 made it up (WithStore, torchrun's agent store)
}

// Init joins the job this process was launched into and returns its
// communicator. Every rank calls it; it returns once all of them have
// met, or with an error naming the ranks that did not come. See the
// package documentation for where the store is and which variables are
// read; options override them.
func Init(ctx context.Context, opts ...Option) (_ *Comm, err error) {
	o := buildOptions(opts)
	env, pc, err := pmiPreconnect(ctx, o, o.env)
	if err != nil {
		return nil, err
	}
	l, err := resolve(o, env)
	if err != nil {
		if pc != nil {
			pc.Finalize(ctx)
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	c := &Comm{rank: l.rank, size: l.size, jobID: l.jobID, secret: l.secret, timeout: l.timeout,
		log: o.log.With("rank", l.rank), shmOpts: o.shm}
	c.grp.backend = l.backend
	defer func() {
		if err != nil {
			c.release()
		}
	}()
	if err := c.pmiRendezvous(ctx, l, env, pc, o.log); err != nil {
		return nil, err
	}

	base := o.store
	if a, ok := base.(interface{ Addr() string }); ok {
		c.kvsAddr = a.Addr()
	}
	if base == nil && l.agentStore {
		if base, err = c.connectAgentStore(ctx, l); err != nil {
			return nil, err
		}
	}
	if base == nil {
		if base, err = c.connect(ctx, l, o.log); err != nil {
			return nil, err
		}
	}

	// A store may outlive a communicator (WithStore in tests; a launcher
	// store across restarts): every Init of the same size on it gets a
	// fresh namespace, "gocoll/<generation>/".
	n, err := base.Add(ctx, "gocoll/arrivals", 1)
	if err != nil {
		return nil, fmt.Errorf("dispatch: rank %d: joining through the store: %w", l.rank, err)
	}
	gen := (n - 1) / int64(l.size)
	c.store = store.Prefix(base, "gocoll/"+strconv.FormatInt(gen, 10)+"/")
	if claims, err := c.store.Add(ctx, "claim/"+strconv.Itoa(l.rank), 1); err != nil {
		return nil, fmt.Errorf("dispatch: rank %d: joining through the store: %w", l.rank, err)
	} else if claims != 1 {
		return nil, fmt.Errorf("dispatch: two processes claim rank %d (from %s): check RANK and WORLD_SIZE, or the launcher", l.rank, l.source)
	}
	// Lives as long as this rank's store connection, so that rank 0's
	// Close need not wait for a rank that died.
	if c.live, err = store.SetEphemeralIn(ctx, c.store, "alive/"+strconv.Itoa(l.rank), nil); err != nil {
		return nil, fmt.Errorf("dispatch: rank %d: joining through the store: %w", l.rank, err)
	}

	if err := c.shareInfo(ctx, l); err != nil {
		return nil, err
	}
	if err := c.learnNodes(ctx, l); err != nil {
		return nil, err
	}
	if (l.localSize >= 0 && l.localSize != c.localSize) || (l.localRank >= 0 && l.localRank != c.localRank) ||
		(l.nodeRank >= 0 && l.nodeRank != c.nodeRank) {
		// The store's view is what shared memory relies on; the
		// launcher's may count differently (containers, oversubscribed
		// Slurm steps, a test's GOCOLL_NODE_ID).
		c.log.Debug("gocoll: the launcher's node layout differs from the ranks sharing this node id; using the latter",
			"launcher_local", fmt.Sprintf("%d/%d", l.localRank, l.localSize), "launcher_node", l.nodeRank,
			"local", fmt.Sprintf("%d/%d", c.localRank, c.localSize), "node", c.nodeRank)
	}
	b, err := c.newBackend(ctx, l.backend)
	if err != nil {
		return nil, err
	}
	c.guard = core.NewGuard(b)
	c.log.Debug("gocoll: ready", "size", c.size, "local_rank", c.localRank, "node", c.nodeRank,
		"nodes", c.numNodes, "backend", b.Name(), "source", l.source)
	return c, nil
}

// connect serves the store if this rank should, and dials it.
func (c *Comm) connect(ctx context.Context, l *launch, log *slog.Logger) (core.Store, error) {
	if c.secret == nil {
		// Only a lone process without MASTER_ADDR gets here (resolve
		// refuses the rest): its store is private.
		c.secret = randomBytes(32)
	}
	addr := l.master
	serve := l.rank == 0 && !l.launcherStore && c.server == nil // pmiRendezvous may serve it already
	if serve {
		listen := "127.0.0.1:0"
		if addr != "" {
			host, port, _ := net.SplitHostPort(addr)
			listen = ":" + port
			if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() || host == "localhost" {
				listen = net.JoinHostPort(host, port)
			}
		}
		srv, err := store.Listen(listen, c.secret, store.WithLogger(log))
		if err != nil {
			return nil, fmt.Errorf("dispatch: rank 0 cannot serve the store (MASTER_PORT in use? pick another): %w", err)
		}
		c.server = srv
		if addr == "" {
			addr = srv.Addr()
		}
	}
	cl, err := store.Dial(ctx, addr, c.secret)
	if err != nil {
		return nil, fmt.Errorf("dispatch: rank %d: %w", l.rank, err)
	}
	c.client = cl
	c.kvsAddr = addr
	return cl, nil
}

// shareInfo has rank 0 publish the job id, the store address and (with
// WithStore and no secret) a secret; the others read them.
func (c *Comm) shareInfo(ctx context.Context, l *launch) error {
	if c.rank == 0 {
		in := info{JobID: c.jobID, KVS: c.kvsAddr}
		if in.JobID == "" {
			in.JobID = "gocoll-" + hex.EncodeToString(randomBytes(8))
		}
		if c.secret == nil {
			c.secret = randomBytes(32)
			in.Secret = hex.EncodeToString(c.secret)
		}
		b, _ := json.Marshal(in)
		if err := c.store.Set(ctx, "info", b); err != nil {
			return fmt.Errorf("dispatch: rank 0: publishing the job info: %w", err)
		}
		c.jobID, c.kvsAddr = in.JobID, in.KVS
		return nil
	}
	b, err := c.store.Get(ctx, "info")
	if err != nil {
		if ctx.Err() != nil {
			return &core.PeerError{Op: "init (waiting for rank 0's job info)", Ranks: []int{0}, Err: ctx.Err()}
		}
		return fmt.Errorf("dispatch: rank %d: reading the job info: %w", c.rank, err)
	}
	var in info
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("dispatch: rank %d: the job info in the store is corrupt (%v): is another job using this store?", c.rank, err)
	}
	if c.jobID != "" && c.jobID != in.JobID {
		return fmt.Errorf("dispatch: rank %d has job id %q (%s) but rank 0 has %q", c.rank, c.jobID, EnvJobID, in.JobID)
	}
	c.jobID, c.kvsAddr = in.JobID, in.KVS
	if c.secret == nil {
		if c.secret, err = hex.DecodeString(in.Secret); err != nil || len(c.secret) == 0 {
			return fmt.Errorf("dispatch: rank %d has no secret and rank 0 shared none: set %s on every rank", c.rank, EnvSecret)
		}
	}
	return nil
}

// learnNodes publishes this rank's node identity, reads everyone's, and
// derives the node layout from them: ranks with equal ids share a node;
// nodes are numbered by their lowest rank, and local ranks by rank.
func (c *Comm) learnNodes(ctx context.Context, l *launch) error {
	id := l.nodeID
	if id == "" {
		id = defaultNodeID()
	}
	if err := c.store.Set(ctx, "node/"+strconv.Itoa(c.rank), []byte(id)); err != nil {
		return fmt.Errorf("dispatch: rank %d: publishing the node id: %w", c.rank, err)
	}
	keys := make([]string, c.size)
	for r := range keys {
		keys[r] = "node/" + strconv.Itoa(r)
	}
	ids, err := store.MultiGetFrom(ctx, c.store, keys...)
	if err != nil {
		if ctx.Err() != nil {
			return &core.PeerError{Op: "init", Ranks: store.Missing(ctx, c.store, keys...), Err: ctx.Err()}
		}
		return fmt.Errorf("dispatch: rank %d: reading node ids: %w", c.rank, err)
	}
	byID := map[string]int{}
	for r, v := range ids {
		nr, ok := byID[string(v)]
		if !ok {
			nr = len(c.nodes)
			byID[string(v)] = nr
			c.nodes = append(c.nodes, nil)
		}
		if r == c.rank {
			c.nodeRank, c.localRank = nr, len(c.nodes[nr])
		}
		c.nodes[nr] = append(c.nodes[nr], r)
	}
	c.numNodes = len(c.nodes)
	c.localSize = len(c.nodes[c.nodeRank])
	return nil
}

// Rank is this process's rank in [0, Size).
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks in the job.
func (c *Comm) Size() int { return c.size }

// LocalRank is this rank's position among the ranks on its node.
func (c *Comm) LocalRank() int { return c.localRank }

// LocalSize is the number of ranks on this rank's node.
func (c *Comm) LocalSize() int { return c.localSize }

// NodeRank is the index of this rank's node; nodes are numbered in order
// of their lowest rank.
func (c *Comm) NodeRank() int { return c.nodeRank }

// NumNodes is the number of nodes the job spans.
func (c *Comm) NumNodes() int { return c.numNodes }

// NodeRanks returns the ranks on node n, in increasing order.
func (c *Comm) NodeRanks(n int) []int { return append([]int(nil), c.nodes[n]...) }

// KVSAddr is the address of the store the ranks met through, as rank 0
// published it ("host:port"); "" when Init was given a store without an
// address.
func (c *Comm) KVSAddr() string { return c.kvsAddr }

// JobID is the job's id; shared resources carry it in their names.
func (c *Comm) JobID() string { return c.jobID }

// Timeout is the default timeout of every wait.
func (c *Comm) Timeout() time.Duration { return c.timeout }

// Store is this job's namespace in the rendezvous store, for application
// use; keys under "app/" never collide with gocoll's own.
func (c *Comm) Store() core.Store { return store.Prefix(c.store, "app/") }

// Backend is the name of the backend running the collectives: "shm",
// "tcp", "shm+tcp" or "kv".
func (c *Comm) Backend() string { return c.guard.Backend().Name() }

// Do runs one collective; see core.Comm and core.Guard. Every call is
// checked once here (core.Check) before the backend runs it; a rank whose
// call fails the check tells its peers, which fail at once naming it. It
// runs after the started calls in flight, if any. Two calls issued from
// different goroutines at once fail with core.ErrConcurrentUse. After Close it
// fails with core.ErrClosed, and after an error that leaves the ranks out
// of step (a rank that never came, a lost connection, a cancelled wait)
// with that error.
//
// There is no context.WithTimeout here: the backends bound their waits by
// the communicator's timeout themselves, computing a deadline only when a
// wait is about to sleep, while a timer per call would cost more than a
// small shared-memory allreduce.
func (c *Comm) Do(ctx context.Context, req *core.Request) error {
	return c.guard.Do(ctx, req)
}

// Barrier returns once every rank has entered it, or with a
// *core.PeerError naming the ranks that had not when ctx ended or the
// default timeout passed.
func (c *Comm) Barrier(ctx context.Context) error {
	return c.Do(ctx, &core.Request{Kind: core.KindBarrier})
}

// Close releases the backend and the store connection. On the rank that
// serves the store it first waits, up to the default timeout (5 s after a
// fatal error), for every other rank to close, so that none loses the
// store while still using it; a rank whose store connection is gone (it
// died) is not waited for. Collectives after Close return core.ErrClosed.
// Close is idempotent.
func (c *Comm) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Comm) close() error {
	var errs []error
	if err := c.guard.Close(); err != nil {
		errs = append(errs, fmt.Errorf("dispatch: closing the %s backend: %w", c.guard.Backend().Name(), err))
	}
	if c.server != nil && c.size > 1 {
		wait := c.timeout
		if c.guard.Err() != nil {
			// Ranks may have died with the job: do not hold the
			// process for the whole timeout waiting for them.
			wait = min(wait, 5*time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		keys := make([]string, c.size-1)
		guards := make([]string, c.size-1)
		for i := range keys {
			keys[i] = "bye/" + strconv.Itoa(i+1)
			guards[i] = "alive/" + strconv.Itoa(i+1)
		}
		if !c.live {
			guards = nil
		}
		all := keys
		quiet := true
		for len(keys) > 0 {
			_, lost, err := store.MultiGetGuardedFrom(ctx, c.store, keys, guards)
			if lost == nil || err != nil {
				quiet = quiet && err == nil
				break
			}
			// A rank whose store connection is gone (it died) will not
			// say bye: stop waiting for it, but not for the others,
			// which may still be finding out through the store.
			quiet = false
			n := len(keys)
			if keys, guards = withoutLost(keys, guards, lost); len(keys) == n {
				break // nothing it names: do not spin on it
			}
		}
		if !quiet {
			var ranks []int
			for _, i := range store.Missing(ctx, c.store, all...) {
				ranks = append(ranks, i+1)
			}
			c.log.Warn("gocoll: closing the store while ranks have not closed", "ranks", ranks)
		}
		cancel()
	} else if c.store != nil && c.size > 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.store.Set(ctx, "bye/"+strconv.Itoa(c.rank), nil); err != nil {
			c.log.Debug("gocoll: telling the store this rank closed", "err", err)
		}
		cancel()
	}
	c.release()
	return errors.Join(errs...)
}

// withoutLost drops from keys, and from guards beside them, the entries
// whose guard is in lost.
func withoutLost(keys, guards, lost []string) ([]string, []string) {
	var k, g []string
	for i := range keys {
		if !slices.Contains(lost, guards[i]) {
			k, g = append(k, keys[i]), append(g, guards[i])
		}
	}
	return k, g
}

// release closes what Init opened.
func (c *Comm) release() {
	if c.client != nil {
		c.client.Close()
	}
	if c.agent != nil {
		c.agent.Close()
	}
	if c.server != nil {
		c.server.Close()
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("gocoll: crypto/rand failed: " + err.Error()) // never on Linux
	}
	return b
}
