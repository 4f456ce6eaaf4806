// Command gocollbench measures gocoll's collectives the way nccl-tests'
// all_reduce_perf measures NCCL's: a sweep of sizes, the median time of
// one call, algorithm and bus bandwidth, and optionally a check of every
// result.
//
//	gocollbench -np 2 -c allreduce -t float32 -o sum -b 8 -e 64M -f 4 [-backend auto|shm|tcp|kv]
//	            [-iters N -warmup N] [-check] [-json] [-plot FILE.svg|.png] [-root R]
//	gocollbench -plot out.svg a.json b.json ...   (overlay saved -json results)
//
// Run alone it starts -np ranks itself (re-executing its own binary with a
// launcher's environment); under gocollrun, torchrun, mpirun or srun it is
// one rank of the job and -np is ignored. Rank 0 prints; the others are quiet.
//
// Columns, as nccl-tests prints them: size in bytes (for allgather, gather,
// reduce_scatter, scatter and alltoall the whole n-block buffer, so the
// per-rank block is size/n), count in elements of that size, type, redop,
// root (-1 where none), time in microseconds (the median over the timed
// iterations on each rank, then the maximum over ranks; -sync puts an
// untimed barrier before every call), algbw = size/time
// and busbw = algbw times the collective's factor (allreduce 2(n-1)/n;
// allgather, reduce_scatter, gather, scatter, alltoall (n-1)/n; broadcast,
// reduce, sendrecv 1) in GB/s, and #wrong: with -check, the number of
// result elements, summed over ranks, that differ from an exact reference.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/bench/perf"
	"github.com/gocoll/gocoll/cmd/gocollbench/internal/bench"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/affinity"
)

// options is the parsed command line.
type options struct {
	bench.Config
	np       int
	npSet    bool // -np given explicitly
	bind     affinity.Mode
	backend  string
	json     bool
	plot     string
	progress bool
	zerocopy bool
	files    []string // result files to plot instead of running
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "gocollbench: %v\n", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		os.Exit(1)
	}
}

// exitError carries a child rank's exit status out of the launcher.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("a rank exited with status %d", int(e)) }

func parse(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("gocollbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	var minS, maxS, stepS string
	fs.IntVar(&o.np, "np", 2, "number of ranks to start (ignored under a launcher)")
	bind := fs.String("bind", string(affinity.Auto), "bind each rank it starts to one CPU, round robin: auto (only when ranks outnumber the CPUs), cpu or none")
	fs.StringVar(&o.Coll, "c", "allreduce", "collective: "+strings.Join(perf.Collectives, ", "))
	fs.StringVar(&o.DType, "t", "float32", "dtype (spec name: float32, float64, bfloat16, float16, int8, ..., uint64)")
	fs.StringVar(&o.Op, "o", "sum", "reduce op: sum, prod, min, max, avg, band, bor, bxor")
	fs.StringVar(&minS, "b", "8", "smallest size in bytes (K, M, G suffixes)")
	fs.StringVar(&maxS, "e", "64M", "largest size in bytes")
	fs.Float64Var(&o.Factor, "f", 4, "size multiplication factor between rows")
	fs.StringVar(&stepS, "i", "0", "size increment instead of -f (bytes)")
	fs.IntVar(&o.Iters, "iters", 20, "timed iterations per size")
	fs.IntVar(&o.Iters, "n", 20, "alias of -iters (nccl-tests' name)")
	fs.IntVar(&o.Warmup, "warmup", 5, "untimed warmup iterations per size")
	fs.IntVar(&o.Warmup, "w", 5, "alias of -warmup (nccl-tests' name)")
	fs.DurationVar(&o.Budget, "budget", 2*time.Second,
		fmt.Sprintf("time budget per size: fewer timed iterations (at least %d) where -iters would take longer; 0 = always -iters", bench.MinIters))
	fs.BoolVar(&o.Check, "check", false, "verify every result against an exact reference and count wrong elements")
	fs.BoolVar(&o.Sync, "sync", false, "an untimed barrier before every call (OSU style): latency of one call, not the period of back-to-back calls")
	fs.DurationVar(&o.Settle, "settle", 100*time.Millisecond, "barriers before the first size, so that the kernel has spread freshly started ranks over the CPUs")
	fs.IntVar(&o.Root, "root", 0, "root rank of reduce, broadcast, gather and scatter")
	fs.StringVar(&o.backend, "backend", "", "backend: auto, shm, tcp or kv (default: $GOCOLL_BACKEND, else auto)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON (bench/perf's schema) instead of the table")
	fs.StringVar(&o.plot, "plot", "", "draw bus bandwidth and time against size into this .svg, .png or .pdf file")
	fs.BoolVar(&o.zerocopy, "zerocopy", false, "send buffers from Comm.Alloc (the shm backend's zero-copy heap; ordinary memory elsewhere)")
	fs.BoolVar(&o.progress, "progress", false, "show the progress line on stderr even when it is not a terminal")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: gocollbench [flags]\n       gocollbench -plot out.svg result.json...\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.files = fs.Args()
	var err error
	if o.bind, err = affinity.Parse(*bind); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { o.npSet = o.npSet || f.Name == "np" })
	if len(o.files) > 0 && o.plot == "" {
		return nil, fmt.Errorf("unexpected arguments %q: result files are only read with -plot", o.files)
	}
	coll, ok := perf.Canonical(o.Coll)
	if !ok {
		return nil, fmt.Errorf("unknown collective %q: want one of %s", o.Coll, strings.Join(perf.Collectives, ", "))
	}
	o.Coll = coll
	if !bench.HasOp(o.Coll) {
		o.Op = ""
	}
	if !bench.HasRoot(o.Coll) {
		o.Root = -1
	}
	if o.Min, err = perf.ParseSize(minS); err != nil {
		return nil, err
	}
	if o.Max, err = perf.ParseSize(maxS); err != nil {
		return nil, err
	}
	if o.Step, err = perf.ParseSize(stepS); err != nil {
		return nil, err
	}
	if o.Iters < 1 || o.Warmup < 0 || o.np < 1 {
		return nil, fmt.Errorf("need -iters >= 1, -warmup >= 0 and -np >= 1")
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(o.files) > 0 {
		return plotFiles(o.plot, o.files, stderr)
	}
	// Check names before starting anything, so a typo fails once, here.
	if _, err := bench.Resolve(&o.Config); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !launched() {
		return launch(ctx, o.np, o.bind, args, stdout, stderr)
	}
	return runRank(ctx, o, stdout, stderr)
}

func runRank(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	var opts []dispatch.Option
	if o.backend != "" {
		opts = append(opts, dispatch.WithBackend(o.backend))
	}
	if o.zerocopy {
		// Room for the largest send buffer, plus slack for alignment.
		opts = append(opts, dispatch.WithShm(shm.WithHeapSize(int(o.Max)+1<<20)))
	}
	comm, err := dispatch.Init(ctx, opts...)
	if err != nil {
		return fmt.Errorf("joining the job: %w", err)
	}
	defer comm.Close()
	x, err := bench.Resolve(&o.Config)
	if err != nil {
		return err
	}
	backend := comm.Backend()
	if o.zerocopy {
		o.SendAlloc, o.SendFree = comm.Alloc, comm.Free
		backend += "-zc"
	}
	rank, n := comm.Rank(), comm.Size()
	leader := rank == 0
	if leader && o.npSet && o.np != n {
		fmt.Fprintf(stderr, "gocollbench: the launcher started %d ranks; -np %d is ignored\n", n, o.np)
	}
	out := &perf.File{Tool: "gocoll", Backend: backend, Collective: o.Coll, DType: o.DType, Op: o.Op,
		NP: n, Root: o.Root, Iters: o.Iters, Warmup: o.Warmup, Sync: o.Sync, Date: time.Now().UTC().Format(time.RFC3339)}
	out.Host, _ = os.Hostname()
	table := leader && !o.json
	if table {
		printHeader(stdout, o, out)
	}
	var progress func(i, total int, size int64)
	if leader && (o.progress || isTerminal(stderr)) {
		start := time.Now()
		progress = func(i, total int, size int64) {
			fmt.Fprintf(stderr, "\r\033[K[%d/%d] %s %s on %d ranks (%s elapsed)", i+1, total, o.Coll,
				perf.FormatSize(size), n, time.Since(start).Round(time.Second))
		}
	}
	row := func(r perf.Row) {
		if progress != nil {
			fmt.Fprint(stderr, "\r\033[K")
		}
		if table {
			printRow(stdout, o, out, r)
		}
	}
	rows, err := bench.Sweep(ctx, comm, &o.Config, x, row, progress)
	if progress != nil {
		fmt.Fprint(stderr, "\r\033[K")
	}
	out.Rows = rows
	if err != nil {
		return fmt.Errorf("rank %d: %w", rank, err)
	}
	if !leader {
		return nil
	}
	if table {
		printFooter(stdout, o, out)
	} else {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	}
	if o.plot != "" {
		if err := perf.Plot(o.plot, []*perf.File{out}); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "gocollbench: wrote %s\n", o.plot)
	}
	return wrongError(out)
}

// wrongError fails the run when -check found wrong elements, so scripts
// and CI notice without parsing the table.
func wrongError(f *perf.File) error {
	var total int64
	for _, r := range f.Rows {
		if r.Wrong != nil {
			total += *r.Wrong
		}
	}
	if total > 0 {
		return fmt.Errorf("-check found %d wrong result elements", total)
	}
	return nil
}

func plotFiles(out string, paths []string, stderr io.Writer) error {
	var files []*perf.File
	for _, p := range paths {
		f, err := perf.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	if err := perf.Plot(out, files); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "gocollbench: wrote %s (%d result files)\n", out, len(files))
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func printHeader(w io.Writer, o *options, f *perf.File) {
	check := "off"
	if o.Check {
		check = "on"
	}
	sync := ""
	if o.Sync {
		sync = ", barrier between calls"
	}
	fmt.Fprintf(w, "# gocollbench: %s on %d ranks, backend %s, iters %d (budget %v per size), warmup %d%s, check %s\n",
		o.Coll, f.NP, f.Backend, o.Iters, o.Budget, o.Warmup, sync, check)
	fmt.Fprintf(w, "#\n")
	fmt.Fprintf(w, "# %10s %12s %9s %7s %6s %10s %8s %8s %7s\n", "size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong")
	fmt.Fprintf(w, "# %10s %12s %9s %7s %6s %10s %8s %8s %7s\n", "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "")
}

func printRow(w io.Writer, o *options, f *perf.File, r perf.Row) {
	op := o.Op
	if op == "" {
		op = "none"
	}
	dt := o.DType
	if dt == "" {
		dt = "-"
	}
	wrong := "N/A"
	if r.Wrong != nil {
		wrong = fmt.Sprint(*r.Wrong)
	}
	fmt.Fprintf(w, "  %10d %12d %9s %7s %6d %10.2f %8.2f %8.2f %7s\n", r.Size, r.Count, dt, op, o.Root, r.TimeUS, r.AlgBW, r.BusBW, wrong)
}

func printFooter(w io.Writer, o *options, f *perf.File) {
	var sum float64
	for _, r := range f.Rows {
		sum += r.BusBW
	}
	if len(f.Rows) > 0 && f.Collective != "barrier" {
		fmt.Fprintf(w, "# Avg bus bandwidth    : %.4g GB/s\n", sum/float64(len(f.Rows)))
	}
	if o.Check {
		var total int64
		for _, r := range f.Rows {
			if r.Wrong != nil {
				total += *r.Wrong
			}
		}
		verdict := "OK"
		if total > 0 {
			verdict = "FAILED"
		}
		fmt.Fprintf(w, "# Wrong elements       : %d %s\n", total, verdict)
	}
	fmt.Fprintln(w, "#")
}
