package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gocoll/gocoll/bench/perf"
)

// asMain makes the test binary behave as gocollbench: the launcher
// re-executes its own binary (this one, under go test) for every rank, and
// the ranks inherit this variable.
const asMain = "GOCOLLBENCH_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runBench runs gocollbench with args as a real multi-process job and returns
// its stdout.
func runBench(t *testing.T, args ...string) string {
	t.Helper()
	t.Setenv(asMain, "1")
	// A launcher's variables in the test's own environment would make the
	// run join that job instead of starting its own ranks.
	for _, k := range []string{"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"} {
		if _, ok := os.LookupEnv(k); ok {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("GOCOLL_TIMEOUT", "60s")
	var stdout, stderr bytes.Buffer
	if err := run(args, &stdout, &stderr); err != nil {
		t.Fatalf("gocollbench %s: %v\nstderr:\n%s\nstdout:\n%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String()
}

// TestCheckedRun is the real run CI makes: two processes, each backend, a
// checked sweep; every row must have #wrong 0.
func TestCheckedRun(t *testing.T) {
	for _, tc := range []struct {
		backend string
		args    []string
	}{
		{"kv", []string{"-c", "allreduce", "-t", "float32", "-o", "sum"}},
		{"kv", []string{"-c", "allgather", "-t", "bfloat16"}},
		{"shm", []string{"-c", "allreduce", "-t", "float32", "-o", "sum"}},
		{"shm", []string{"-c", "reduce_scatter", "-t", "bfloat16", "-o", "max"}},
		{"shm", []string{"-c", "allreduce", "-t", "float32", "-o", "sum", "-zerocopy"}},
		{"tcp", []string{"-c", "allreduce", "-t", "float32", "-o", "sum"}},
		{"tcp", []string{"-c", "broadcast", "-t", "int32", "-root", "1"}},
	} {
		t.Run(tc.backend+"/"+strings.Join(tc.args, ""), func(t *testing.T) {
			args := append([]string{"-np", "2", "-backend", tc.backend, "-b", "8", "-e", "1M", "-f", "16",
				"-iters", "3", "-warmup", "1", "-check", "-json"}, tc.args...)
			out := runBench(t, args...)
			var f perf.File
			if err := json.Unmarshal([]byte(out), &f); err != nil {
				t.Fatalf("-json output is not a result: %v\n%s", err, out)
			}
			wantBackend := tc.backend
			if tc.args[len(tc.args)-1] == "-zerocopy" {
				wantBackend += "-zc"
			}
			if f.NP != 2 || f.Backend != wantBackend || f.Tool != "gocoll" {
				t.Errorf("result names np %d backend %q tool %q; want 2, %q, gocoll", f.NP, f.Backend, f.Tool, wantBackend)
			}
			// 8 B .. 1 MiB by x16 (aligned to the block), ending at 1 MiB.
			if len(f.Rows) != 6 || f.Rows[len(f.Rows)-1].Size != 1<<20 {
				t.Errorf("got %d rows ending at %d; want 6 ending at 1 MiB", len(f.Rows), f.Rows[len(f.Rows)-1].Size)
			}
			for _, r := range f.Rows {
				if r.Wrong == nil || *r.Wrong != 0 {
					t.Errorf("size %d: #wrong %v, want 0", r.Size, r.Wrong)
				}
				if r.TimeUS <= 0 {
					t.Errorf("size %d: time %g", r.Size, r.TimeUS)
				}
			}
		})
	}
}

// TestTableAndPlot checks the human output and the plot of saved results.
func TestTableAndPlot(t *testing.T) {
	dir := t.TempDir()
	plot := filepath.Join(dir, "run.svg")
	out := runBench(t, "-np", "2", "-backend", "kv", "-b", "64", "-e", "4K", "-f", "8", "-iters", "2", "-warmup", "0",
		"-check", "-plot", plot)
	for _, want := range []string{"#       size        count", "float32     sum     -1", "# Wrong elements       : 0 OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := 0
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines++
			if fields := strings.Fields(l); len(fields) != 9 || fields[8] != "0" {
				t.Errorf("row %q: want 9 columns ending with #wrong 0", l)
			}
		}
	}
	if lines != 3 { // 64, 512, 4096
		t.Errorf("%d rows, want 3:\n%s", lines, out)
	}
	if b, err := os.ReadFile(plot); err != nil || !bytes.Contains(b, []byte("<svg")) {
		t.Errorf("-plot wrote no svg: %v", err)
	}

	// Overlay two saved results.
	js := runBench(t, "-np", "2", "-backend", "kv", "-b", "64", "-e", "512", "-iters", "2", "-json")
	a := filepath.Join(dir, "a.json")
	if err := os.WriteFile(a, []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	both := filepath.Join(dir, "both.png")
	var stderr bytes.Buffer
	if err := run([]string{"-plot", both, a, a}, &bytes.Buffer{}, &stderr); err != nil {
		t.Fatalf("plotting saved results: %v", err)
	}
	if b, err := os.ReadFile(both); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("overlay is not a PNG: %v", err)
	}
}

// TestRankFailure checks that a job whose ranks fail ends, with an error,
// instead of hanging: every rank rejects a root outside the job.
func TestRankFailure(t *testing.T) {
	t.Setenv(asMain, "1")
	var stderr bytes.Buffer
	err := run([]string{"-np", "2", "-backend", "kv", "-c", "broadcast", "-root", "5", "-e", "64"}, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "-root 5 is not a rank of 2") {
		t.Errorf("run = %v, stderr:\n%s\nwant a failure naming the bad root", err, stderr.String())
	}
}

func TestParseErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-c", "allfoo"},
		{"-b", "8X"},
		{"-iters", "0"},
		{"-t", "complex64"},
		{"-t", "int8", "-o", "avg"},
		{"a.json"}, // files without -plot
	} {
		if err := run(args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("gocollbench %v: no error", args)
		}
	}
}
