package dispatch

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/internal/pmi"
)

// Environment variables gocoll reads besides the launchers' own.
const (
	// EnvSecret holds the job's shared secret. gocollrun sets a fresh one,
	// and so does rank 0 under mpiexec and srun --mpi=pmi2 (through PMI)
	// and under torchrun (see torchrun.go); under mpirun or plain srun
	// pass it yourself (mpirun -x GOCOLL_SECRET=..., or
	// GOCOLL_SECRET=... srun ...).
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
	agentStore    bool   // torchrun's agent serves a c10d store at master (see torchrun.go)
	agentPrefix   string // gocoll's namespace in the agent's store
	secret        []byte // nil: none given
	jobID         string
	timeout       time.Duration
	backend       string
	nodeID        string // "" for the default (hostname + boot id)

	// What Init learns through the launcher's PMI (see pmiRendezvous).
	pmi       int    // protocol version; 0: PMI is not used
	pmiMaster bool   // the store's address
	pmiSecret bool   // the secret
	pmiHost   string // MASTER_ADDR, where set alone: the host rank 0 advertises
	pmiPort   string // MASTER_PORT, where set alone: the port rank 0 binds
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
// wins (see conventions). Under srun, MASTER_ADDR and MASTER_PORT default
// to values derived from the step (see slurmPortBase); under Open MPI a
// missing variable is an error naming the mpirun flags that pass it on
// (see ompiMissing). A variable that is set but unusable, or a convention
// with half its variables, is an error naming the variable.
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
	if o.rank != nil || o.size != nil {
		// Options that set the rank or the size describe another job than
		// the launcher's (a sub-job on a store.Prefix, a test), whose local
		// layout the launcher's variables do not describe; the layout is
		// computed from the ranks' node ids anyway.
		l.localRank, l.localSize, l.nodeRank = -1, -1, -1
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

	// Under hydra and srun --mpi=pmi2, PMI can tell the ranks what the
	// environment does not (see pmiRendezvous).
	pmiVer, err := pmiVersion(env)
	if err != nil {
		return nil, err
	}
	if l.source != "MPICH/Intel MPI" || !pmi.Offered(pmi.Env(env)) {
		pmiVer = 0
	}

	// Where the store is.
	if l.source == "Open MPI" && o.store == nil && l.size > 1 {
		if err := ompiMissing(o, env, l); err != nil {
			return nil, err
		}
	}
	if o.master != "" {
		if _, _, err := splitHostPort(o.master, "WithMaster"); err != nil {
			return nil, err
		}
		l.master = o.master
	} else {
		addr, aok := env("MASTER_ADDR")
		port, pok := env("MASTER_PORT")
		if (!aok || !pok) && o.store == nil && l.size > 1 && pmiVer > 0 {
			// Rank 0 picks what is missing and shares it through PMI.
			if aok && addr == "" {
				return nil, fmt.Errorf("dispatch: MASTER_ADDR is empty; set it to rank 0's host, or unset it")
			}
			if pok {
				if _, err := strconv.ParseUint(port, 10, 16); err != nil {
					return nil, fmt.Errorf("dispatch: MASTER_PORT=%q is not a port number (0..65535)", port)
				}
			}
			l.pmi, l.pmiMaster, l.pmiHost, l.pmiPort = pmiVer, true, addr, port
			aok, pok = false, false
		}
		if (!aok || !pok) && !l.pmiMaster && o.store == nil && l.size > 1 && slurmStep(l, env) {
			var err error
			if addr, port, err = slurmMaster(env, l.rank, addr, aok, port, pok); err != nil {
				return nil, err
			}
			aok, pok = true, true
		}
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
	if l.master == "" && !l.pmiMaster && o.store == nil && l.size > 1 {
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
	if err := torchrunResolve(o, env, l); err != nil {
		return nil, err
	}
	if l.secret == nil && o.store == nil && l.size > 1 && pmiVer > 0 {
		// Rank 0 makes a fresh one and shares it through PMI.
		l.pmi, l.pmiSecret = pmiVer, true
	}
	if l.secret == nil && !l.pmiSecret && o.store == nil && l.master != "" && l.size > 1 && slurmStep(l, env) {
		return nil, fmt.Errorf("dispatch: %s is not set: every rank needs the job's secret to reach the store at %s; "+
			"srun passes on the environment it was started with, so run %s=$(openssl rand -hex 16) srun ... "+
			"(with --export, name %s in it); or launch with srun --mpi=pmi2, through whose PMI rank 0 shares "+
			"a fresh secret and the store's address, with nothing exported", EnvSecret, l.master, EnvSecret, EnvSecret)
	}
	if l.secret == nil && !l.pmiSecret && !l.agentStore && o.store == nil && l.master != "" {
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

// Under plain srun nothing tells the ranks where rank 0 is, so Init
// derives MASTER_ADDR and MASTER_PORT from the step's own variables when
// they are unset (an explicit value of either one wins):
//
//   - MASTER_ADDR is the first host of SLURM_STEP_NODELIST, where Slurm
//     places task 0 under its block and cyclic distributions. With another
//     distribution set MASTER_ADDR yourself.
//   - MASTER_PORT is slurmPortBase + (SLURM_JOB_ID*97 + SLURM_STEP_ID) mod
//     slurmPortSpan: 61440..65535, above Linux's default ephemeral range
//     (32768..60999), so outgoing connections rarely hold it. Every rank of
//     the step computes the same port; steps of one job, and jobs whose ids
//     are less than 42 apart, get different ports as long as their step ids
//     are below 97.
const (
	slurmPortBase = 61440
	slurmPortSpan = 4096
)

// slurmStep reports whether srun itself started this process, so that the
// step's variables describe it: Slurm's convention won, or MPICH's PMI
// variables did but agree with Slurm's (srun --mpi=pmi2 sets both). Under
// mpirun or mpiexec inside an allocation, SLURM_* describe the launcher's
// daemons, not the ranks, and are not read.
func slurmStep(l *launch, env envLookup) bool {
	switch l.source {
	case "Slurm":
		return true
	case "MPICH/Intel MPI":
		r, rok, rerr := intVar(env, "SLURM_PROCID")
		s, sok, serr := intVar(env, "SLURM_NTASKS")
		return rok && sok && rerr == nil && serr == nil && r == l.rank && s == l.size
	}
	return false
}

// slurmMaster fills in whichever of MASTER_ADDR and MASTER_PORT is unset
// from the Slurm step (see slurmPortBase).
func slurmMaster(env envLookup, rank int, addr string, aok bool, port string, pok bool) (string, string, error) {
	if !aok {
		list, ok := env("SLURM_STEP_NODELIST")
		if !ok || strings.TrimSpace(list) == "" {
			return "", "", fmt.Errorf("dispatch: SLURM_STEP_NODELIST is not set, so rank 0's host is unknown; " +
				"start the ranks with srun, or set MASTER_ADDR and MASTER_PORT")
		}
		hl, err := parseHostlist(list)
		if err != nil {
			return "", "", fmt.Errorf("dispatch: SLURM_STEP_NODELIST: %w; set MASTER_ADDR to rank 0's host", err)
		}
		addr = hl[0].first()
		// Rank 0 serves the store; if it is not on the first node, the
		// others would dial a host where nobody listens until they time out.
		if node, ok := env("SLURMD_NODENAME"); ok && node != "" && rank == 0 && node != addr {
			return "", "", fmt.Errorf("dispatch: rank 0 runs on %s, not on %s, the first node of SLURM_STEP_NODELIST=%s; "+
				"set MASTER_ADDR=%s (or use srun's block or cyclic distribution)", node, addr, list, node)
		}
	}
	if !pok {
		job, err := slurmID(env, "SLURM_JOB_ID", "SLURM_JOBID")
		if err != nil {
			return "", "", err
		}
		step, err := slurmID(env, "SLURM_STEP_ID", "SLURM_STEPID")
		if err != nil {
			return "", "", err
		}
		port = strconv.FormatUint(slurmPort(job, step), 10)
	}
	return addr, port, nil
}

// slurmPort is the store's port for a job's step (see slurmPortBase).
func slurmPort(job, step uint64) uint64 {
	return slurmPortBase + (job%slurmPortSpan*97+step)%slurmPortSpan
}

// slurmID reads a job or step id, under its name or its older spelling.
func slurmID(env envLookup, name, alt string) (uint64, error) {
	v, ok := env(name)
	if !ok {
		if v, ok = env(alt); ok {
			name = alt
		}
	}
	if !ok {
		return 0, fmt.Errorf("dispatch: %s is not set, so the store's port cannot be derived; set MASTER_PORT", name)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("dispatch: %s=%q is not a Slurm id; set MASTER_PORT", name, v)
	}
	return id, nil
}

// ompiMissing names the mpirun flags that would pass on what this rank
// lacks. mpirun passes on only the variables named with -x, and nothing
// else tells a rank where rank 0 is: Open MPI's ranks meet through PMIx,
// whose standard defines a C API but no wire protocol. OpenPMIx's
// client-server protocol is internal to the library and changes with its
// versions, and there is no pure-Go client, so reading it would mean
// linking libpmix through cgo, which gocoll does not use.
func ompiMissing(o *options, env envLookup, l *launch) error {
	var names, flags []string
	if o.master == "" {
		if v, ok := env("MASTER_ADDR"); !ok || v == "" {
			host := "<rank 0's host>"
			if ls, ok, err := intVar(env, "OMPI_COMM_WORLD_LOCAL_SIZE"); err == nil && ok && ls == l.size {
				host = "127.0.0.1" // every rank is on this node
			}
			names, flags = append(names, "MASTER_ADDR"), append(flags, "-x MASTER_ADDR="+host)
		}
		if _, ok := env("MASTER_PORT"); !ok {
			names, flags = append(names, "MASTER_PORT"), append(flags, "-x MASTER_PORT=<a free port, e.g. 29500>")
		}
	}
	if o.secret == nil {
		if _, ok := env(EnvSecret); !ok {
			names, flags = append(names, EnvSecret), append(flags, "-x "+EnvSecret+"=$(openssl rand -hex 16)")
		}
	}
	if len(names) == 0 {
		return nil
	}
	list := names[0]
	if n := len(names); n > 1 {
		list = strings.Join(names[:n-1], ", ") + " and " + names[n-1]
	}
	return fmt.Errorf("dispatch: Open MPI started rank %d of %d without %s: mpirun passes on only the variables "+
		"named with -x; add %s to mpirun's command line (-x NAME alone passes on mpirun's own value)",
		l.rank, l.size, list, strings.Join(flags, " "))
}

// Slurm's hostlist syntax: a comma-separated list of hosts, where a host
// may hold bracketed groups of numbers and ranges, each expanded in turn:
// "node[01-03,07]" is node01, node02, node03, node07 (the width of a
// range's lower bound is kept, zeros and all), "rack[1-2]-n[1-2]" is
// rack1-n1, rack1-n2, rack2-n1, rack2-n2, and "a[1-2],b3" is a1, a2, b3.

// hostPattern is one comma-separated entry of a hostlist: literal text
// and bracketed groups, in order.
type hostPattern []hostPart

// hostPart is literal text, or a bracketed group when ranges is non-nil.
type hostPart struct {
	text   string
	ranges []hostRange
}

// hostRange is lo..hi, each printed at least width digits wide.
type hostRange struct {
	lo, hi uint64
	width  int
}

// parseHostlist parses a whole hostlist, so that a malformed entry is an
// error even where only the first host is wanted.
func parseHostlist(s string) ([]hostPattern, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("hostlist is empty")
	}
	var list []hostPattern
	var cur hostPattern
	var lit strings.Builder
	endEntry := func(at int) error {
		if lit.Len() > 0 {
			cur = append(cur, hostPart{text: lit.String()})
			lit.Reset()
		}
		if len(cur) == 0 {
			return fmt.Errorf("hostlist %q has an empty host at offset %d", s, at)
		}
		list = append(list, cur)
		cur = nil
		return nil
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ',':
			if err := endEntry(i); err != nil {
				return nil, err
			}
		case '[':
			end := strings.IndexAny(s[i+1:], "[]")
			if end < 0 || s[i+1+end] != ']' {
				return nil, fmt.Errorf("hostlist %q: the '[' at offset %d has no matching ']'", s, i)
			}
			ranges, err := parseRanges(s[i+1 : i+1+end])
			if err != nil {
				return nil, fmt.Errorf("hostlist %q: group at offset %d: %w", s, i, err)
			}
			if lit.Len() > 0 {
				cur = append(cur, hostPart{text: lit.String()})
				lit.Reset()
			}
			cur = append(cur, hostPart{ranges: ranges})
			i += 1 + end
		case ']':
			return nil, fmt.Errorf("hostlist %q: the ']' at offset %d has no matching '['", s, i)
		default:
			if c <= ' ' || c >= 0x7f {
				return nil, fmt.Errorf("hostlist %q: unexpected character %q at offset %d", s, c, i)
			}
			lit.WriteByte(c)
		}
	}
	if err := endEntry(len(s)); err != nil {
		return nil, err
	}
	return list, nil
}

// parseRanges parses the inside of a bracketed group: "01-04,07".
func parseRanges(g string) ([]hostRange, error) {
	if g == "" {
		return nil, fmt.Errorf("the group is empty")
	}
	var rs []hostRange
	for _, r := range strings.Split(g, ",") {
		los, his, isRange := strings.Cut(r, "-")
		if !isRange {
			his = los
		}
		lo, err := parseHostNum(los, r)
		if err != nil {
			return nil, err
		}
		hi, err := parseHostNum(his, r)
		if err != nil {
			return nil, err
		}
		if hi < lo {
			return nil, fmt.Errorf("range %q runs backwards", r)
		}
		rs = append(rs, hostRange{lo: lo, hi: hi, width: len(los)})
	}
	return rs, nil
}

func parseHostNum(s, r string) (uint64, error) {
	if s == "" || len(s) > 18 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a number or a range of numbers (like 3 or 01-04)", r)
	}
	return strconv.ParseUint(s, 10, 64)
}

// first is the entry's first host: each group at its first number.
func (p hostPattern) first() string {
	var b strings.Builder
	for _, part := range p {
		if part.ranges == nil {
			b.WriteString(part.text)
			continue
		}
		r := part.ranges[0]
		b.WriteString(padNum(r.lo, r.width))
	}
	return b.String()
}

func padNum(n uint64, width int) string {
	s := strconv.FormatUint(n, 10)
	if len(s) < width {
		s = strings.Repeat("0", width-len(s)) + s
	}
	return s
}
