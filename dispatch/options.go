package dispatch

import (
	"github.com/gocoll/gocoll/backends/shm"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Option configures Init. Options override the environment.
type Option func(*options)

type options struct {
	rank, size *int
	master     string
	secret     []byte
	jobID      string
	timeout    time.Duration
	backend    string
	nodeID     string
	store      core.Store
	log        *slog.Logger
	env        envLookup
	shm        []shm.Option
}

// WithRank sets this process's rank, overriding RANK and the other
// launchers' variables.
func WithRank(r int) Option { return func(o *options) { o.rank = &r } }

// WithSize sets the number of ranks, overriding WORLD_SIZE and the other
// launchers' variables.
func WithSize(n int) Option { return func(o *options) { o.size = &n } }

// WithMaster sets the store's address "host:port", overriding MASTER_ADDR
// and MASTER_PORT. Rank 0 serves the store there unless the launcher does
// (GOCOLL_LAUNCHER_STORE=1) or WithStore is given.
func WithMaster(addr string) Option { return func(o *options) { o.master = addr } }

// WithSecret sets the job's shared secret, overriding GOCOLL_SECRET.
func WithSecret(secret []byte) Option {
	return func(o *options) { o.secret = append([]byte{}, secret...) }
}

// WithJobID sets the job id, overriding GOCOLL_JOB_ID.
func WithJobID(id string) Option { return func(o *options) { o.jobID = id } }

// WithTimeout bounds every wait (Init, collectives, Barrier), overriding
// GOCOLL_TIMEOUT; a context deadline can only make a wait shorter.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithBackend picks the backend: "auto" (shm when all ranks share a node,
// tcp otherwise), "shm", "tcp" or "kv" (through the store: slow, for
// reference). It overrides GOCOLL_BACKEND.
func WithBackend(name string) Option { return func(o *options) { o.backend = name } }

// WithNodeID sets this rank's node identity, overriding GOCOLL_NODE_ID and
// the default (hostname and boot id). Ranks with equal ids are taken to
// share a node, and so shared memory. For tests.
func WithNodeID(id string) Option { return func(o *options) { o.nodeID = id } }

// WithStore makes the communicator meet through s (e.g. a store.Client
// the caller dialled, or an in-process store for goroutine ranks) instead
// of serving or dialling the store at MASTER_ADDR:MASTER_PORT. Init does
// not close s. Without a secret, rank 0 makes one up and shares it
// through s. Communicators made one after another on one store each get a
// fresh namespace in it, provided every rank took part in each Init;
// communicators made at the same time need separate stores or prefixes
// (store.Prefix). For communicators among some ranks of a job, Comm.Split
// and Comm.NewGroup need neither.
func WithStore(s core.Store) Option { return func(o *options) { o.store = s } }

// WithLogger sends the communicator's log (and the store server's, on
// rank 0) to l instead of slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithEnviron makes Init read its variables from env ("KEY=value"
// entries, as os.Environ returns) instead of the process environment.
func WithEnviron(env []string) Option {
	return func(o *options) {
		m := make(map[string]string, len(env))
		for _, kv := range env {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		o.env = func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
}

func buildOptions(opts []Option) *options {
	o := &options{log: slog.Default(), env: os.LookupEnv}
	for _, f := range opts {
		f(o)
	}
	return o
}

// WithShm passes options to the shared-memory backend wherever Init starts
// one (backend shm, or inside each node with the hierarchical backend),
// e.g. shm.WithHeapSize to make room for Comm.Alloc's zero-copy buffers.
// Rank 0's sizes apply to every rank of a node.
func WithShm(opts ...shm.Option) Option {
	return func(o *options) { o.shm = append(o.shm, opts...) }
}
