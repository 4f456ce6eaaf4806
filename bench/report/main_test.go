package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gocoll/gocoll/bench/perf"
)

func TestReport(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	write := func(name string, f *perf.File) {
		p := filepath.Join(dir, name)
		if err := perf.WriteFile(p, f); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	row := func(size int64, us float64) perf.Row {
		return perf.Row{Size: size, Count: size / 4, TimeUS: us, AlgBW: perf.AlgBW(size, us),
			BusBW: perf.BusBW("allreduce", 2, size, us), Iters: 10}
	}
	for rep, us := range []float64{10, 30, 20} {
		write("shm"+string(rune('a'+rep))+".json", &perf.File{Tool: "gocoll", Backend: "shm", Collective: "allreduce",
			DType: "float32", Op: "sum", NP: 2, Root: -1, Rows: []perf.Row{row(8, us), row(1024, 4*us)}})
	}
	write("mpi.json", &perf.File{Tool: "openmpi", Backend: "openmpi", Collective: "allreduce",
		DType: "float32", Op: "sum", NP: 2, Root: -1, Rows: []perf.Row{row(8, 5), row(1024, 160)}})
	md := filepath.Join(dir, "report.md")
	var stderr bytes.Buffer
	args := append([]string{"-o", md, "-plots", filepath.Join(dir, "plots"), "-note", "test machine"}, paths...)
	if err := run(args, &stderr); err != nil {
		t.Fatalf("report: %v\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"test machine", "median over 3 repetitions",
		"| allreduce | float32 sum | 2 | 8B | 20.0 | 5.00 | 4.00 |",
		"| allreduce | float32 sum | 2 | 1KiB | 80.0 | 160.0 | 0.50 |",
		"![allreduce float32 np2](plots/allreduce_float32_np2.svg)"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report lacks %q:\n%s", want, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "plots", "allreduce_float32_np2.svg")); err != nil {
		t.Errorf("no plot: %v", err)
	}
	if err := run([]string{"-o", md}, &stderr); err == nil {
		t.Errorf("report without result files did not fail")
	}
}
