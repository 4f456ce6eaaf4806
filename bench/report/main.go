// Command report turns the result files of a bench/compare run into its
// markdown report: one table of median times and gocoll/peer ratios for
// every case, np and size, and one overlaid plot (bus bandwidth and time
// against size, every tool) per case and np.
//
//	go run ./bench/report -o report.md -plots plots/ -title "..." results/*.json
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/gocoll/gocoll/bench/perf"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "report.md", "markdown file to write")
	plots := fs.String("plots", "", "directory for the overlaid plots (none if empty)")
	format := fs.String("format", "svg", "plot format: svg, png or pdf")
	title := fs.String("title", "gocoll vs Gloo vs Open MPI", "report title")
	note := fs.String("note", "", "a paragraph under the title (machine, date, settings)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("no result files: give the JSON files bench/compare wrote")
	}
	var files []*perf.File
	for _, p := range fs.Args() {
		f, err := perf.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	var md bytes.Buffer
	fmt.Fprintf(&md, "# %s\n\n", *title)
	if *note != "" {
		fmt.Fprintf(&md, "%s\n\n", *note)
	}
	fmt.Fprintf(&md, "Times are microseconds per call: on each rank the median over the timed iterations, "+
		"then the maximum over ranks, then the median over %s. A ratio is gocoll's time divided by the peer's: "+
		"below 1 gocoll is faster. Sizes follow nccl-tests (allgather: the whole gathered buffer).\n\n", reps(files))
	if err := perf.WriteComparison(&md, files); err != nil {
		return err
	}
	if *plots != "" {
		if err := os.MkdirAll(*plots, 0o755); err != nil {
			return err
		}
		med := perf.Medians(files)
		groups := map[string][]*perf.File{}
		var order []string
		for _, f := range med {
			if len(f.Rows) == 0 {
				continue
			}
			k := fmt.Sprintf("%s_%s_np%d", f.Collective, f.DType, f.NP)
			if groups[k] == nil {
				order = append(order, k)
			}
			groups[k] = append(groups[k], f)
		}
		fmt.Fprintf(&md, "\n## Plots\n\n")
		for _, k := range order {
			path := filepath.Join(*plots, k+"."+*format)
			if err := perf.Plot(path, groups[k]); err != nil {
				return err
			}
			rel, err := filepath.Rel(filepath.Dir(*out), path)
			if err != nil {
				rel = path
			}
			fmt.Fprintf(&md, "![%s](%s)\n\n", strings.ReplaceAll(k, "_", " "), filepath.ToSlash(rel))
		}
	}
	if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "report: wrote %s from %d result files\n", *out, len(files))
	return nil
}

// reps says how many repetitions the medians fold, e.g. "3 repetitions".
func reps(files []*perf.File) string {
	most := 0
	for _, f := range perf.Medians(files) {
		for _, r := range f.Rows {
			most = max(most, r.Iters) // Medians stores the repetition count in Iters
		}
	}
	if most == 1 {
		return "1 repetition"
	}
	return fmt.Sprintf("%d repetitions", most)
}
