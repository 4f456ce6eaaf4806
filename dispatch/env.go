package dispatch

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Environment variables gocoll reads besides the launchers' own.
const (
	// EnvSecret holds the job's shared secret. gocollrun sets a fresh one;
	// under mpirun or srun pass it yourself (mpirun -x GOCOLL_SECRET=...).
	EnvSecret = "GOCOLL_SECRET"
	// EnvJobID names the job; shared resources carry it. Optional: rank 0
	// makes one up and shares it through the store when it is unset.
	EnvJobID = "GOCOLL_JOB_ID"
	// EnvTimeout is the default timeout of every wait: a Go duration
	// ("90s", "5m") or a number of seconds.
	EnvTimeout = "GOCOLL_TIMEOUT"
	// EnvBackend picks the backend: auto, shm, tcp or kv.
	EnvBackend = "GOCOLL_BACKEND"
	// EnvNodeID overrides the node identity (hostname and boot id), so
	// that tests can pretend ranks on one machine sit on several nodes.
	EnvNodeID = "GOCOLL_NODE_ID"
	// EnvLauncherStore, when "1", says the launcher already serves the
	// store at MASTER_ADDR:MASTER_PORT, so rank 0 only dials it.
	EnvLauncherStore = "GOCOLL_LAUNCHER_STORE"
)

// DefaultTimeout bounds every wait when neither WithTimeout nor
// GOCOLL_TIMEOUT says otherwise: core's, the one default of every layer.
const DefaultTimeout = core.DefaultTimeout

// convention is one launcher's naming of the rank variables.
type convention struct {
	name                 string
	rank, size           string
	localRank, localSize string
	sizeAlt              string // an older spelling of size, read if size is unset
	node                 string // the node's index, where the launcher gives one
}

// conventions in order of precedence. The first one whose rank or size
// variable is set wins and the others are ignored, because launchers nest:
// an sbatch script leaves SLURM_PROCID=0 in every process mpirun starts
// from it, and torchrun under mpirun leaves the agent's OMPI_COMM_WORLD_RANK
// in every worker. The innermost launcher is the one that knows this
// process's rank, and inner launchers are listed first.
var conventions = []convention{
	{name: "torchrun", rank: "RANK", size: "WORLD_SIZE", localRank: "LOCAL_RANK", localSize: "LOCAL_WORLD_SIZE", node: "GROUP_RANK"},
	{name: "Open MPI", rank: "OMPI_COMM_WORLD_RANK", size: "OMPI_COMM_WORLD_SIZE",
		localRank: "OMPI_COMM_WORLD_LOCAL_RANK", localSize: "OMPI_COMM_WORLD_LOCAL_SIZE"},
	{name: "MPICH/Intel MPI", rank: "PMI_RANK", size: "PMI_SIZE", localRank: "MPI_LOCALRANKID", localSize: "MPI_LOCALNRANKS"},
	{name: "Slurm", rank: "SLURM_PROCID", size: "SLURM_NTASKS", sizeAlt: "SLURM_NPROCS", localRank: "SLURM_LOCALID", node: "SLURM_NODEID"},
}

// launch is what Init learned from options and environment, before it
// talks to anyone.
type launch struct {
	source    string // convention or "options" or "standalone"
	rank      int
	size      int
	localRank int // -1: not given (always computed from node identities)
	localSize int // -1: not given
	nodeRank  int // -1: not given (always computed from node identities)

	master        string // store address "host:port"; "" for standalone
	launcherStore bool   // the launcher serves the store
	secret        []byte // nil: none given
	jobID         string
	timeout       time.Duration
	backend       string
	nodeID        string // "" for the default (hostname + boot id)
}

// envLookup is os.LookupEnv or a test's stand-in.
type envLookup func(string) (string, bool)

// intVar parses an integer variable; ok is false if it is unset.
func intVar(env envLookup, name string) (v int, ok bool, err error) {
	s, ok := env(name)
	if !ok {
		return 0, false, nil
	}
	v, err = strconv.Atoi(strings.TrimSpace(s))
	if err != nil || v < 0 {
		return 0, true, fmt.Errorf("dispatch: %s=%q is not a non-negative integer", name, s)
	}
	return v, true, nil
}

// resolve combines options and environment into a launch. Options win over
// the environment; within the environment the first convention present
// wins (see conventions). A variable that is set but unusable, or a
// convention with half its variables, is an error naming the variable.
func resolve(o *options, env envLookup) (*launch, error) {
	l := &launch{rank: -1, size: -1, localRank: -1, localSize: -1, nodeRank: -1}

	rankVar, sizeVar := "RANK", "WORLD_SIZE" // named in errors when nothing is set
	for _, c := range conventions {
		r, rok, err := intVar(env, c.rank)
		if err != nil {
			return nil, err
		}
		sv := c.size
		s, sok, err := intVar(env, c.size)
		if err != nil {
			return nil, err
		}
		if !sok && c.sizeAlt != "" {
			sv = c.sizeAlt
			if s, sok, err = intVar(env, c.sizeAlt); err != nil {
				return nil, err
			}
			if !sok {
				sv = c.size
			}
		}
		if !rok && !sok {
			continue
		}
		rankVar, sizeVar = c.rank, sv
		l.source = c.name
		if rok {
			l.rank = r
		}
		if sok {
			l.size = s
		}
		if lr, ok, err := intVar(env, c.localRank); err != nil {
			return nil, err
		} else if ok {
			l.localRank = lr
		}
		if c.node != "" {
			if nr, ok, err := intVar(env, c.node); err != nil {
				return nil, err
			} else if ok {
				l.nodeRank = nr
			}
		}
		if c.localSize != "" {
			if ls, ok, err := intVar(env, c.localSize); err != nil {
				return nil, err
			} else if ok {
				l.localSize = ls
				if ls == 0 {
					return nil, fmt.Errorf("dispatch: %s=0: a node has at least one rank", c.localSize)
				}
				if l.localRank >= ls {
					return nil, fmt.Errorf("dispatch: %s=%d is not below %s=%d", c.localRank, l.localRank, c.localSize, ls)
				}
			}
		}
		break
	}
	if o.rank != nil {
		l.rank, rankVar = *o.rank, "WithRank"
		if l.source == "" {
			l.source = "options"
		}
	}
	if o.size != nil {
		l.size, sizeVar = *o.size, "WithSize"
		if l.source == "" {
			l.source = "options"
		}
	}
	switch {
	case l.rank < 0 && l.size < 0:
		// No launcher and no options: a job of one process.
		l.rank, l.size, l.source = 0, 1, "standalone"
	case l.rank < 0:
		return nil, fmt.Errorf("dispatch: %s=%d is set but %s is not; set both (or WithRank)", sizeVar, l.size, rankVar)
	case l.size < 0:
		return nil, fmt.Errorf("dispatch: %s=%d is set but %s is not; set both (or WithSize)", rankVar, l.rank, sizeVar)
	case l.size == 0:
		return nil, fmt.Errorf("dispatch: %s=0: a job has at least one rank", sizeVar)
	case l.rank >= l.size:
		return nil, fmt.Errorf("dispatch: %s=%d is not below %s=%d", rankVar, l.rank, sizeVar, l.size)
	}
	if l.localSize > l.size {
		return nil, fmt.Errorf("dispatch: local size %d exceeds %s=%d", l.localSize, sizeVar, l.size)
	}

	// Where the store is.
	if o.master != "" {
		if _, _, err := splitHostPort(o.master, "WithMaster"); err != nil {
			return nil, err
		}
		l.master = o.master
	} else {
		addr, aok := env("MASTER_ADDR")
		port, pok := env("MASTER_PORT")
		switch {
		case aok && pok:
			if addr == "" {
				return nil, fmt.Errorf("dispatch: MASTER_ADDR is empty; set it to rank 0's host")
			}
			l.master = net.JoinHostPort(addr, port)
			if _, _, err := splitHostPort(l.master, "MASTER_PORT"); err != nil {
				return nil, err
			}
		case aok:
			return nil, fmt.Errorf("dispatch: MASTER_ADDR=%s is set but MASTER_PORT is not; set both", addr)
		case pok:
			return nil, fmt.Errorf("dispatch: MASTER_PORT=%s is set but MASTER_ADDR is not; set both", port)
		}
	}
	if l.master != "" && l.size > 1 && o.store == nil {
		if _, p, _ := splitHostPort(l.master, "MASTER_PORT"); p == 0 {
			return nil, fmt.Errorf("dispatch: MASTER_PORT=0: %d ranks must agree on a fixed port", l.size)
		}
	}
	if l.master == "" && o.store == nil && l.size > 1 {
		return nil, fmt.Errorf("dispatch: %d ranks need a store: set MASTER_ADDR and MASTER_PORT (rank 0's host and a free port), or WithMaster, or WithStore", l.size)
	}
	if v, ok := env(EnvLauncherStore); ok && v != "" && v != "0" {
		if v != "1" {
			return nil, fmt.Errorf("dispatch: %s=%q: want 1 or 0", EnvLauncherStore, v)
		}
		if l.master == "" {
			return nil, fmt.Errorf("dispatch: %s=1 but MASTER_ADDR/MASTER_PORT are not set", EnvLauncherStore)
		}
		l.launcherStore = true
	}

	// Secret and job id.
	if o.secret != nil {
		if len(o.secret) == 0 {
			return nil, fmt.Errorf("dispatch: WithSecret: the secret is empty")
		}
		l.secret = o.secret
	} else if v, ok := env(EnvSecret); ok {
		if v == "" {
			return nil, fmt.Errorf("dispatch: %s is set but empty", EnvSecret)
		}
		l.secret = []byte(v)
	}
	if l.secret == nil && o.store == nil && l.master != "" {
		return nil, fmt.Errorf("dispatch: %s is not set: every rank needs the job's secret to reach the store at %s "+
			"(gocollrun sets it; with mpirun pass -x %s=$(openssl rand -hex 16))", EnvSecret, l.master, EnvSecret)
	}
	l.jobID = o.jobID
	if l.jobID == "" {
		l.jobID, _ = env(EnvJobID)
	}

	// Timeout, backend, node identity.
	l.timeout = DefaultTimeout
	if o.timeout > 0 {
		l.timeout = o.timeout
	} else if v, ok := env(EnvTimeout); ok {
		d, err := parseTimeout(v)
		if err != nil {
			return nil, err
		}
		l.timeout = d
	}
	l.backend = "auto"
	if o.backend != "" {
		l.backend = o.backend
	} else if v, ok := env(EnvBackend); ok && v != "" {
		l.backend = v
	}
	switch l.backend {
	case "auto", "shm", "tcp", "kv":
	default:
		src := EnvBackend
		if o.backend != "" {
			src = "WithBackend"
		}
		return nil, fmt.Errorf("dispatch: %s=%q: want auto, shm, tcp or kv", src, l.backend)
	}
	l.nodeID = o.nodeID
	if l.nodeID == "" {
		l.nodeID, _ = env(EnvNodeID)
	}
	return l, nil
}

func parseTimeout(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil {
			return 0, fmt.Errorf("dispatch: %s=%q is not a duration (e.g. 90s, 5m) or a number of seconds", EnvTimeout, v)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("dispatch: %s=%q: the timeout must be positive", EnvTimeout, v)
	}
	return d, nil
}

func splitHostPort(addr, what string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("dispatch: %s: %q is not host:port: %w", what, addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("dispatch: %s=%q is not a port number (0..65535)", what, port)
	}
	return host, p, nil
}

// defaultNodeID identifies this machine's kernel instance. The boot id
// tells apart two hosts that happen to share a hostname; the hostname
// tells apart containers on one kernel, which usually cannot share
// /dev/shm. Ranks that share a node id are assumed to share memory.
func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		return host + "/" + strings.TrimSpace(string(b))
	}
	return host
}
