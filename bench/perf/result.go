package perf

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

// File is one benchmark run: one collective, dtype and op on np ranks, over
// a sweep of sizes. gocollbench -json, bench/gloo_bench.py and
// bench/mpi_bench.c all write exactly this schema, so one reader plots and
// compares them.
type File struct {
	Tool       string `json:"tool"`    // "gocoll", "gloo", "openmpi"
	Backend    string `json:"backend"` // gocoll's backend ("shm", "tcp", "kv"); the peer's name otherwise
	Collective string `json:"collective"`
	DType      string `json:"dtype"`
	Op         string `json:"op,omitempty"` // "" for collectives without a reduce op
	NP         int    `json:"np"`
	Root       int    `json:"root"` // -1 for collectives without a root
	Iters      int    `json:"iters"`
	Warmup     int    `json:"warmup"`
	// Sync is set when every call was preceded by an untimed barrier.
	Sync bool   `json:"sync,omitempty"`
	Host string `json:"host,omitempty"`
	Date string `json:"date,omitempty"` // RFC 3339, when the run started
	// Unsupported is set, and Rows empty, when the tool cannot run this
	// combination (Open MPI has no bfloat16); it says why.
	Unsupported string `json:"unsupported,omitempty"`
	Rows        []Row  `json:"rows"`
}

// Row is one size of a sweep.
type Row struct {
	Size  int64 `json:"size"`  // bytes, nccl-tests' convention (see package doc)
	Count int64 `json:"count"` // elements in Size bytes
	// TimeUS is the median time of one call over the timed iterations on
	// each rank, then the maximum over ranks, in microseconds.
	TimeUS float64 `json:"time_us"`
	AlgBW  float64 `json:"algbw"` // GB/s
	BusBW  float64 `json:"busbw"` // GB/s
	Iters  int     `json:"iters"` // timed iterations this row ran
	// Wrong is the number of wrong result elements summed over ranks, or
	// nil when the run did not check results.
	Wrong *int64 `json:"wrong,omitempty"`
}

// Label names the run in legends and tables, e.g. "gocoll-shm np=2".
func (f *File) Label() string {
	name := f.Tool
	if f.Backend != "" && f.Backend != f.Tool {
		name += "-" + f.Backend
	}
	return fmt.Sprintf("%s np=%d", name, f.NP)
}

// Case names what was measured, e.g. "allreduce float32 sum".
func (f *File) Case() string {
	s := f.Collective + " " + f.DType
	if f.Op != "" {
		s += " " + f.Op
	}
	return s
}

// Validate reports a file that does not follow the schema, so a broken peer
// benchmark fails loudly instead of plotting nonsense.
func (f *File) Validate() error {
	if f.Tool == "" || f.Collective == "" || f.NP < 1 {
		return fmt.Errorf("perf: result needs tool, collective and np >= 1 (got %q, %q, %d)", f.Tool, f.Collective, f.NP)
	}
	if _, ok := Canonical(f.Collective); !ok {
		return fmt.Errorf("perf: result has unknown collective %q", f.Collective)
	}
	for i, r := range f.Rows {
		if r.Size < 0 || r.TimeUS < 0 {
			return fmt.Errorf("perf: %s row %d: negative size or time", f.Label(), i)
		}
		if i > 0 && r.Size <= f.Rows[i-1].Size {
			return fmt.Errorf("perf: %s row %d: sizes must increase", f.Label(), i)
		}
	}
	return nil
}

// ReadFile reads and validates one result file.
func ReadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("perf: %s is not a benchmark result (gocollbench -json output): %w", path, err)
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// WriteFile writes f as indented JSON.
func WriteFile(path string, f *File) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
