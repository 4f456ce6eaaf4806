// Command gocollrun starts the ranks of a gocoll job on this node, like
// torchrun:
//
//	gocollrun -np 4 ./train -epochs 3
//	gocollrun -np 8 -nnodes 2 -node-rank 0 -master-addr node0 -master-port 29500 ./train
//
// It gives each rank torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) and the job's
// secret (GOCOLL_SECRET: fresh for a one-node job; a multi-node job needs
// the same value in every gocollrun's environment). Unless GOMAXPROCS is
// set, each rank gets GOMAXPROCS at its share of the node's CPUs (at least
// 1), as torchrun sets OMP_NUM_THREADS=1: ranks that each ran a thread per
// CPU would take the CPUs from each other. On node 0 it serves
// the rendezvous store at MASTER_ADDR:MASTER_PORT itself, and tells the
// ranks so (GOCOLL_LAUNCHER_STORE=1), so the store outlives any rank.
//
// Each output line of a rank is prefixed with "[rank N] " unless
// -prefix=false. SIGINT and SIGTERM are forwarded to every rank (a second
// one kills them). When a rank exits non-zero, gocollrun says which, stops
// the others (SIGTERM, then SIGKILL after -grace) and exits with that
// rank's code (128+signal for a rank killed by a signal). Every rank runs
// in its own process group with a parent-death signal, and gocollrun kills
// those groups before it exits, so no child outlives it.
//
// With -on-failure=continue (like MPICH's -disable-auto-cleanup and Open
// MPI's --enable-recovery) a rank that fails or is killed leaves the
// others running, so that they can go on without it (dispatch's
// Comm.Shrink): gocollrun says which rank failed, waits for every rank,
// names each failed rank again at the end, and exits with the code of the
// first rank that failed (0 only when every rank exited 0). The store it
// serves outlives every rank, rank 0 included, so the survivors can
// Shrink. SIGINT and SIGTERM still stop every rank.
//
// In a multi-node job node 0's gocollrun, once its own ranks have exited,
// goes on serving the store for as long as ranks of other nodes are
// connected to it (each rank holds one connection from Init to Close, and
// it closes when the rank's process ends, however it ends), then exits:
// under -on-failure=continue, so that survivors on other nodes can
// Shrink (again and again, over a long run) even when every rank of node
// 0 died; under -on-failure=stop when its ranks all exited 0, so that
// ranks of other nodes that finish a moment later still reach the store
// as they Close. Under -on-failure=stop a failed rank of node 0 stops the
// job, and the store closes at once, so that the other nodes' ranks fail
// fast. -store-linger bounds the wait (by default the job's timeout under
// -on-failure=stop, no bound under continue); SIGINT or SIGTERM ends it at
// once, and gocollrun then exits 128+signal unless a rank had failed.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/affinity"
	"github.com/gocoll/gocoll/store"
)

func main() {
	os.Exit(gocollrun(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// config is what the flags and environment say.
type config struct {
	np, nnodes, nodeRank int
	masterAddr           string
	masterPort           int
	prefix               bool
	grace                time.Duration
	backend, timeout     string
	bind                 affinity.Mode
	onFailure            onFailure
	storeLinger          time.Duration
	storeLingerSet       bool // -store-linger given; else it depends on onFailure
	argv                 []string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("gocollrun", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	fs.IntVar(&c.np, "np", 1, "number of ranks to start on this node (torchrun's --nproc-per-node)")
	fs.IntVar(&c.np, "nproc-per-node", 1, "same as -np")
	fs.IntVar(&c.nnodes, "nnodes", 1, "number of nodes, each running gocollrun with the same -np")
	fs.IntVar(&c.nodeRank, "node-rank", 0, "this node's index in [0, nnodes); node 0 serves the store")
	fs.StringVar(&c.masterAddr, "master-addr", "127.0.0.1", "host of node 0, where the store listens")
	fs.IntVar(&c.masterPort, "master-port", 0, "store port on node 0 (0: any free port; multi-node jobs must set it)")
	fs.BoolVar(&c.prefix, "prefix", true, `prefix every output line with "[rank N] "`)
	fs.DurationVar(&c.grace, "grace", time.Second, "how long stopped ranks get between SIGTERM and SIGKILL")
	fs.StringVar(&c.backend, "backend", "", "sets GOCOLL_BACKEND for the ranks: auto, shm, tcp or kv")
	fs.StringVar(&c.timeout, "timeout", "", "sets GOCOLL_TIMEOUT for the ranks, e.g. 90s")
	policy := fs.String("on-failure", string(failStop), "what a rank that exits non-zero or is killed does to the others: stop (gocollrun stops them) or continue (they go on, e.g. to Shrink; gocollrun waits for all and exits with the first failed rank's code)")
	fs.DurationVar(&c.storeLinger, "store-linger", 0, "on node 0 of a multi-node job: the longest gocollrun keeps serving the store, once this node's ranks have exited, for ranks of other nodes still connected to it (0: no limit; default: the job's timeout with -on-failure=stop, no limit with continue)")
	bind := fs.String("bind", string(affinity.Auto), "bind each rank to one CPU, round robin: auto (only when ranks outnumber this node's CPUs), cpu (always) or none")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: gocollrun [flags] PROGRAM [ARGS...]\n\nStarts the ranks of a gocoll job on this node.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.argv = fs.Args()
	fs.Visit(func(f *flag.Flag) { c.storeLingerSet = c.storeLingerSet || f.Name == "store-linger" })
	var err error
	if c.bind, err = affinity.Parse(*bind); err != nil {
		return nil, fmt.Errorf("-bind: %w", err)
	}
	switch c.onFailure = onFailure(*policy); c.onFailure {
	case failStop, failContinue:
	default:
		return nil, fmt.Errorf("-on-failure %q: want %s or %s", *policy, failStop, failContinue)
	}
	switch {
	case len(c.argv) == 0:
		fs.Usage()
		return nil, errors.New("no program to run")
	case c.np < 1:
		return nil, fmt.Errorf("-np %d: need at least one rank", c.np)
	case c.nnodes < 1:
		return nil, fmt.Errorf("-nnodes %d: need at least one node", c.nnodes)
	case c.nodeRank < 0 || c.nodeRank >= c.nnodes:
		return nil, fmt.Errorf("-node-rank %d is not in [0, %d)", c.nodeRank, c.nnodes)
	case c.masterPort < 0 || c.masterPort > 65535:
		return nil, fmt.Errorf("-master-port %d is not a port", c.masterPort)
	case c.nnodes > 1 && c.masterPort == 0:
		return nil, errors.New("-master-port: a multi-node job needs a fixed port that every node's gocollrun is given")
	case c.grace < 0:
		return nil, fmt.Errorf("-grace %v is negative", c.grace)
	case c.storeLinger < 0:
		return nil, fmt.Errorf("-store-linger %v is negative", c.storeLinger)
	}
	return c, nil
}

// gocollrun runs the launcher and returns its exit code.
func gocollrun(args, environ []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "gocollrun:", err)
		return 2
	}
	env := envMap(environ)

	secret := env[dispatch.EnvSecret]
	if secret == "" {
		if c.nnodes > 1 {
			fmt.Fprintf(stderr, "gocollrun: a multi-node job needs the same %s in every node's environment, e.g. export %s=$(openssl rand -hex 16)\n",
				dispatch.EnvSecret, dispatch.EnvSecret)
			return 2
		}
		secret = randomHex(32)
	}
	jobID := env[dispatch.EnvJobID]
	if jobID == "" && c.nnodes == 1 {
		jobID = "gocollrun-" + randomHex(8)
	}
	// With several nodes and no GOCOLL_JOB_ID, rank 0 makes the id up and
	// shares it through the store: each node's launcher would pick another.

	linger := c.storeLinger
	if !c.storeLingerSet && c.onFailure == failStop && c.nodeRank == 0 && c.nnodes > 1 {
		if linger, err = jobTimeout(c.timeout, env); err != nil {
			fmt.Fprintln(stderr, "gocollrun:", err)
			return 2
		}
	}

	port := c.masterPort
	var hold *storeHold
	if c.nodeRank == 0 {
		listen := net.JoinHostPort("", strconv.Itoa(port))
		if ip := net.ParseIP(c.masterAddr); (ip != nil && ip.IsLoopback()) || c.masterAddr == "localhost" {
			listen = net.JoinHostPort(c.masterAddr, strconv.Itoa(port))
		}
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		srv, err := store.Listen(listen, []byte(secret), store.WithLogger(log))
		if err != nil {
			fmt.Fprintf(stderr, "gocollrun: serving the store: %v (is -master-port %d free?)\n", err, port)
			return 1
		}
		defer srv.Close()
		_, p, _ := net.SplitHostPort(srv.Addr())
		port, _ = strconv.Atoi(p)
		if c.nnodes > 1 {
			hold = &storeHold{idle: srv.Idle, max: linger}
		}
	}

	base, procs, err := affinity.Procs(withoutJobVars(environ), c.np)
	if err != nil {
		fmt.Fprintln(stderr, "gocollrun:", err)
		return 1
	}
	if procs != "" && c.np > 1 {
		// As torchrun says of OMP_NUM_THREADS: a rank that computes in
		// parallel itself may want more.
		fmt.Fprintf(stderr, "gocollrun: each rank runs with %s (this node's CPUs shared out); set GOMAXPROCS to choose\n", procs)
	}
	world := c.np * c.nnodes
	ranks := make([]rankSpec, c.np)
	for i := range ranks {
		r := c.nodeRank*c.np + i
		e := append(base[:len(base):len(base)],
			"RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(world),
			"LOCAL_RANK="+strconv.Itoa(i), "LOCAL_WORLD_SIZE="+strconv.Itoa(c.np),
			"GROUP_RANK="+strconv.Itoa(c.nodeRank),
			"MASTER_ADDR="+c.masterAddr, "MASTER_PORT="+strconv.Itoa(port),
			dispatch.EnvSecret+"="+secret, dispatch.EnvLauncherStore+"=1",
		)
		if jobID != "" {
			e = append(e, dispatch.EnvJobID+"="+jobID)
		}
		if c.backend != "" {
			e = append(e, dispatch.EnvBackend+"="+c.backend)
		}
		if c.timeout != "" {
			e = append(e, dispatch.EnvTimeout+"="+c.timeout)
		}
		ranks[i] = rankSpec{rank: r, argv: c.argv, env: e, cpu: -1}
	}
	plan, err := affinity.Plan(c.bind, c.np)
	if err != nil {
		fmt.Fprintf(stderr, "gocollrun: -bind %s: %v\n", c.bind, err)
		return 1
	}
	for i, cpu := range plan {
		ranks[i].cpu = cpu
	}
	return launch(context.Background(), ranks, c.prefix, c.grace, c.onFailure, hold, stdout, stderr)
}

// jobTimeout is the timeout the ranks get: -timeout, else the
// environment's GOCOLL_TIMEOUT, else core.DefaultTimeout. Like the ranks,
// it takes a Go duration or a number of seconds.
func jobTimeout(flagValue string, env map[string]string) (time.Duration, error) {
	v, what := flagValue, "-timeout"
	if v == "" {
		v, what = env[dispatch.EnvTimeout], dispatch.EnvTimeout
	}
	if v = strings.TrimSpace(v); v == "" {
		return core.DefaultTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil {
			return 0, fmt.Errorf("%s %q is not a duration (e.g. 90s, 5m) or a number of seconds", what, v)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s %q: the timeout must be positive", what, v)
	}
	return d, nil
}

func envMap(environ []string) map[string]string {
	m := map[string]string{}
	for _, kv := range environ {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				m[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	return m
}

// jobVars are the variables gocollrun sets; inherited values are dropped
// so that the ranks see exactly one of each.
var jobVars = map[string]bool{
	"RANK": true, "WORLD_SIZE": true, "LOCAL_RANK": true, "LOCAL_WORLD_SIZE": true, "GROUP_RANK": true,
	"MASTER_ADDR": true, "MASTER_PORT": true, dispatch.EnvSecret: true, dispatch.EnvLauncherStore: true,
	dispatch.EnvJobID: true,
}

func withoutJobVars(environ []string) []string {
	out := make([]string, 0, len(environ)+12)
	for _, kv := range environ {
		k := kv
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				k = kv[:i]
				break
			}
		}
		if !jobVars[k] {
			out = append(out, kv)
		}
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("gocollrun: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}
