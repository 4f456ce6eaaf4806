package perf

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestBandwidth checks the arithmetic against nccl-tests' doc/PERFORMANCE.md:
// algbw = S/t; busbw = algbw * 2(n-1)/n for allreduce, (n-1)/n for
// reduce_scatter, allgather and alltoall, 1 for broadcast and reduce.
// Expected values are worked out by hand, not with the code under test.
func TestBandwidth(t *testing.T) {
	tests := []struct {
		coll   string
		n      int
		size   int64
		timeUS float64
		algbw  float64
		busbw  float64
	}{
		// 1 GB in 1 s is 1 GB/s.
		{"allreduce", 2, 1e9, 1e6, 1, 1},         // 2*1/2 = 1
		{"allreduce", 4, 1e9, 1e6, 1, 1.5},       // 2*3/4
		{"allreduce", 8, 1e9, 1e6, 1, 1.75},      // 2*7/8
		{"allreduce", 1, 1e9, 1e6, 1, 0},         // one rank moves nothing
		{"reduce_scatter", 4, 1e9, 1e6, 1, 0.75}, // 3/4
		{"allgather", 2, 1e9, 1e6, 1, 0.5},       // 1/2
		{"allgather", 8, 4e9, 2e6, 2, 1.75},      // 2 GB/s * 7/8
		{"alltoall", 4, 1e9, 1e6, 1, 0.75},
		{"gather", 4, 1e9, 1e6, 1, 0.75},
		{"scatter", 4, 1e9, 1e6, 1, 0.75},
		{"broadcast", 4, 1e9, 1e6, 1, 1},
		{"reduce", 8, 1e9, 1e6, 1, 1},
		{"sendrecv", 2, 1e9, 1e6, 1, 1},
		{"barrier", 4, 0, 10, 0, 0},
		// nccl-tests prints 8 B allreduce in 18.95 us as 0.00 GB/s: 4.2e-4.
		{"allreduce", 2, 8, 18.95, 8 / 18.95e-6 / 1e9, 8 / 18.95e-6 / 1e9},
		// 64 MiB in 10 ms: 6.7108864 GB/s algbw; 4 ranks: x 1.5.
		{"allreduce", 4, 64 << 20, 10000, 6.7108864, 10.0663296},
	}
	for _, tc := range tests {
		alg := AlgBW(tc.size, tc.timeUS)
		bus := BusBW(tc.coll, tc.n, tc.size, tc.timeUS)
		if math.Abs(alg-tc.algbw) > 1e-9*math.Max(1, tc.algbw) || math.Abs(bus-tc.busbw) > 1e-9*math.Max(1, tc.busbw) {
			t.Errorf("%s n=%d size=%d t=%gus: algbw %g busbw %g, want %g %g", tc.coll, tc.n, tc.size, tc.timeUS, alg, bus, tc.algbw, tc.busbw)
		}
	}
	if AlgBW(8, 0) != 0 {
		t.Errorf("AlgBW with zero time must be 0, not Inf")
	}
}

func TestBlockFactor(t *testing.T) {
	for _, c := range Collectives {
		want := 1
		switch c {
		case "allgather", "reduce_scatter", "gather", "scatter", "alltoall",
			"allgatherv", "reduce_scatter_v", "gatherv", "scatterv", "alltoallv":
			want = 4
		}
		if got := BlockFactor(c, 4); got != want {
			t.Errorf("BlockFactor(%s, 4) = %d, want %d", c, got, want)
		}
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{"all_reduce": "allreduce", "AllReduce": "allreduce",
		"bcast": "broadcast", "reducescatter": "reduce_scatter", "reduce_scatter": "reduce_scatter",
		"all-gather": "allgather", "alltoall": "alltoall", "send": "sendrecv"} {
		if got, ok := Canonical(in); !ok || got != want {
			t.Errorf("Canonical(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := Canonical("allfoo"); ok {
		t.Errorf("Canonical accepted allfoo")
	}
}

func TestSizes(t *testing.T) {
	got, err := Sizes(8, 64<<20, 4, 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{8, 32, 128, 512, 2048, 8192, 32768, 131072, 524288, 2097152, 8388608, 33554432, 67108864}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Sizes(8, 64M, 4): (-want +got)\n%s", diff)
	}
	// allgather float32 on 4 ranks: sizes are multiples of 16 bytes.
	got, _ = Sizes(8, 64, 2, 0, 16)
	if diff := cmp.Diff([]int64{16, 32, 64}, got); diff != "" {
		t.Errorf("Sizes aligned: (-want +got)\n%s", diff)
	}
	got, _ = Sizes(8, 100, 4, 0, 4)
	if diff := cmp.Diff([]int64{8, 32, 100}, got); diff != "" {
		t.Errorf("Sizes must end at max: (-want +got)\n%s", diff)
	}
	got, _ = Sizes(100, 400, 0, 100, 1)
	if diff := cmp.Diff([]int64{100, 200, 300, 400}, got); diff != "" {
		t.Errorf("Sizes with step: (-want +got)\n%s", diff)
	}
	for _, bad := range [][2]int64{{0, 8}, {16, 8}} {
		if _, err := Sizes(bad[0], bad[1], 2, 0, 1); err == nil {
			t.Errorf("Sizes(%d, %d) accepted a bad range", bad[0], bad[1])
		}
	}
	if _, err := Sizes(8, 16, 1, 0, 1); err == nil {
		t.Errorf("Sizes accepted factor 1 (endless sweep)")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"8": 8, "64K": 64 << 10, "64M": 64 << 20, "1G": 1 << 30,
		"64MiB": 64 << 20, "2kb": 2048} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-8", "8X", "1.5M"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted it", bad)
		}
	}
	for n, want := range map[int64]string{8: "8B", 1024: "1KiB", 64 << 20: "64MiB", 1 << 30: "1GiB", 1500: "1500B"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestMedian(t *testing.T) {
	xs := []float64{5, 1, 3}
	if got := Median(xs); got != 3 {
		t.Errorf("Median(5,1,3) = %g", got)
	}
	if xs[0] != 5 {
		t.Errorf("Median sorted its argument in place")
	}
	if got := Median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("Median(4,1,3,2) = %g", got)
	}
}

func sample(tool, backend, dtype string, np int, times ...float64) *File {
	f := &File{Tool: tool, Backend: backend, Collective: "allreduce", DType: dtype, Op: "sum", NP: np, Root: -1}
	for i, t := range times {
		size := int64(8) << (2 * i)
		f.Rows = append(f.Rows, Row{Size: size, Count: size / 4, TimeUS: t,
			AlgBW: AlgBW(size, t), BusBW: BusBW("allreduce", np, size, t)})
	}
	return f
}

func TestComparison(t *testing.T) {
	files := []*File{
		sample("gocoll", "shm", "float32", 2, 10, 20),
		sample("gocoll", "shm", "float32", 2, 30, 40),
		sample("gocoll", "shm", "float32", 2, 20, 60),
		sample("gloo", "gloo", "float32", 2, 40, 80),
		sample("openmpi", "openmpi", "float32", 2, 20, 20),
		sample("gocoll", "shm", "bfloat16", 2, 5),
		{Tool: "openmpi", Backend: "openmpi", Collective: "allreduce", DType: "bfloat16", Op: "sum", NP: 2,
			Root: -1, Unsupported: "MPI has no bfloat16 datatype"},
	}
	med := Medians(files)
	var shm *File
	for _, f := range med {
		if f.Tool == "gocoll" && f.DType == "float32" {
			shm = f
		}
	}
	if shm == nil || len(shm.Rows) != 2 || shm.Rows[0].TimeUS != 20 || shm.Rows[1].TimeUS != 40 || shm.Rows[0].Iters != 3 {
		t.Fatalf("Medians folded the three gocoll-shm repetitions wrong: %+v", shm)
	}
	var buf bytes.Buffer
	if err := WriteComparison(&buf, files); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"| collective | dtype | np | size | gocoll-shm (us) | gloo (us) | openmpi (us) | shm/gloo | shm/openmpi |",
		"| allreduce | float32 sum | 2 | 8B | 20.0 | 40.0 | 20.0 | 0.50 | 1.00 |",
		"| allreduce | float32 sum | 2 | 32B | 40.0 | 80.0 | 20.0 | 0.50 | 2.00 |",
		"| allreduce | bfloat16 sum | 2 | 8B | 5.00 | not run | unsupported | - | - |",
		"- openmpi, allreduce bfloat16: MPI has no bfloat16 datatype\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison lacks %q; got:\n%s", want, out)
		}
	}
}

func TestPlotAndFiles(t *testing.T) {
	dir := t.TempDir()
	a := sample("gocoll", "shm", "float32", 2, 10, 20, 400)
	b := sample("gloo", "gloo", "float32", 2, 40, 80, 900)
	for _, f := range []*File{a, b} {
		if err := WriteFile(filepath.Join(dir, f.Tool+".json"), f); err != nil {
			t.Fatal(err)
		}
	}
	ra, err := ReadFile(filepath.Join(dir, "gocoll.json"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a, ra); diff != "" {
		t.Errorf("JSON round trip changed the result (-want +got)\n%s", diff)
	}
	rb, err := ReadFile(filepath.Join(dir, "gloo.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"p.svg", "p.png"} {
		out := filepath.Join(dir, name)
		if err := Plot(out, []*File{ra, rb}); err != nil {

			t.Fatalf("Plot(%s): %v", name, err)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		switch name {
		case "p.svg":
			if !bytes.Contains(data, []byte("<svg")) || !bytes.Contains(data, []byte("gocoll-shm np=2")) {
				t.Errorf("svg plot lacks the svg element or the legend")
			}
		case "p.png":
			if !bytes.HasPrefix(data, []byte("\x89PNG")) {
				t.Errorf("png plot is not a PNG")
			}
		}
	}
	if err := Plot(filepath.Join(dir, "p.xyz"), []*File{ra}); err == nil {
		t.Errorf("Plot accepted an unknown format")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"tool":"x","collective":"allfoo","np":2}`), 0o644)
	if _, err := ReadFile(bad); err == nil {
		t.Errorf("ReadFile accepted an unknown collective")
	}
}
