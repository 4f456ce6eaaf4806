package perf

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// series is one tool's medians on one case and np.
type series struct {
	tool, backend string
	unsupported   string
	times         map[int64]float64 // size -> median time over repetitions
}

func (s *series) name() string {
	if s.backend != "" && s.backend != s.tool {
		return s.tool + "-" + s.backend
	}
	return s.tool
}

type caseKey struct {
	collective, dtype, op string
	np                    int
}

// Medians folds the repetitions in files into one file per tool, case and
// np whose rows hold, per size, the median time over repetitions (and the
// bandwidths of that median); a row's Iters is the number of repetitions
// it folds. A size some repetition lacks is kept with the repetitions that
// have it. The result is sorted by case, np and label.
func Medians(files []*File) []*File {
	type key struct {
		caseKey
		tool, backend string
	}
	groups := map[key][]*File{}
	var order []key
	for _, f := range files {
		k := key{caseKey{f.Collective, f.DType, f.Op, f.NP}, f.Tool, f.Backend}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], f)
	}
	var out []*File
	for _, k := range order {
		fs := groups[k]
		m := *fs[0]
		m.Rows = nil
		times := map[int64][]float64{}
		counts := map[int64]int64{}
		for _, f := range fs {
			if f.Unsupported != "" {
				m.Unsupported = f.Unsupported
			}
			for _, r := range f.Rows {
				times[r.Size] = append(times[r.Size], r.TimeUS)
				counts[r.Size] = r.Count
			}
		}
		sizes := make([]int64, 0, len(times))
		for s := range times {
			sizes = append(sizes, s)
		}
		sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
		for _, s := range sizes {
			t := Median(times[s])
			m.Rows = append(m.Rows, Row{Size: s, Count: counts[s], TimeUS: t, AlgBW: AlgBW(s, t),
				BusBW: BusBW(m.Collective, m.NP, s, t), Iters: len(times[s])})
		}
		out = append(out, &m)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Case() != b.Case() {
			return caseOrder(a) < caseOrder(b)
		}
		if a.NP != b.NP {
			return a.NP < b.NP
		}
		return a.Label() < b.Label()
	})
	return out
}

func caseOrder(f *File) string {
	for i, c := range Collectives {
		if c == f.Collective {
			return fmt.Sprintf("%02d %s %s", i, f.DType, f.Op)
		}
	}
	return "99 " + f.Case()
}

// WriteComparison writes one markdown table comparing gocoll's backends
// with every peer tool in files (repetitions are folded with Medians): a
// row per case, np and size with each tool's median time in microseconds
// and, for every gocoll backend and peer, the ratio gocoll time / peer time
// (below 1: gocoll is faster). A peer that cannot run a case (Open MPI has
// no bfloat16) shows why instead of numbers.
func WriteComparison(w io.Writer, files []*File) error {
	med := Medians(files)
	var cases []caseKey
	byCase := map[caseKey]map[string]*series{}
	var gocolls, peers []string
	seen := map[string]bool{}
	for _, f := range med {
		k := caseKey{f.Collective, f.DType, f.Op, f.NP}
		if byCase[k] == nil {
			byCase[k] = map[string]*series{}
			cases = append(cases, k)
		}
		s := &series{tool: f.Tool, backend: f.Backend, unsupported: f.Unsupported, times: map[int64]float64{}}
		for _, r := range f.Rows {
			s.times[r.Size] = r.TimeUS
		}
		byCase[k][s.name()] = s
		if !seen[s.name()] {
			seen[s.name()] = true
			if f.Tool == "gocoll" {
				gocolls = append(gocolls, s.name())
			} else {
				peers = append(peers, s.name())
			}
		}
	}
	if len(cases) == 0 {
		return fmt.Errorf("perf: no results to compare")
	}
	sort.Strings(gocolls)
	sort.Strings(peers)
	tools := append(append([]string(nil), gocolls...), peers...)

	var hdr, sep []string
	hdr = append(hdr, "collective", "dtype", "np", "size")
	for _, t := range tools {
		hdr = append(hdr, t+" (us)")
	}
	for _, g := range gocolls {
		for _, p := range peers {
			hdr = append(hdr, strings.TrimPrefix(g, "gocoll-")+"/"+p)
		}
	}
	for range hdr {
		sep = append(sep, "---:")
	}
	sep[0], sep[1] = "---", "---"
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(hdr, " | "), strings.Join(sep, " | "))

	for _, k := range cases {
		ss := byCase[k]
		sizeSet := map[int64]bool{}
		for _, s := range ss {
			for sz := range s.times {
				sizeSet[sz] = true
			}
		}
		sizes := make([]int64, 0, len(sizeSet))
		for sz := range sizeSet {
			sizes = append(sizes, sz)
		}
		sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
		if len(sizes) == 0 {
			sizes = []int64{-1} // a case only unsupported peers ran: still say so
		}
		dt := k.dtype
		if k.op != "" {
			dt += " " + k.op
		}
		for _, sz := range sizes {
			cells := []string{k.collective, dt, fmt.Sprint(k.np), FormatSize(sz)}
			if sz < 0 {
				cells[3] = "-"
			}
			val := func(name string) (float64, string) {
				s := ss[name]
				switch {
				case s == nil:
					return 0, "not run"
				case s.unsupported != "":
					return 0, "unsupported"
				}
				t, ok := s.times[sz]
				if !ok {
					return 0, "not run"
				}
				return t, ""
			}
			for _, t := range tools {
				v, why := val(t)
				if why != "" {
					cells = append(cells, why)
				} else {
					cells = append(cells, formatUS(v))
				}
			}
			for _, g := range gocolls {
				gv, gwhy := val(g)
				for _, p := range peers {
					pv, pwhy := val(p)
					switch {
					case gwhy != "" || pwhy != "" || pv <= 0:
						cells = append(cells, "-")
					default:
						cells = append(cells, fmt.Sprintf("%.2f", gv/pv))
					}
				}
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
		}
	}
	// Say once, under the table, why a cell reads "unsupported".
	var why []string
	seenWhy := map[string]bool{}
	for _, k := range cases {
		for _, t := range tools {
			if s := byCase[k][t]; s != nil && s.unsupported != "" {
				line := fmt.Sprintf("%s, %s %s: %s", t, k.collective, k.dtype, s.unsupported)
				if !seenWhy[line] {
					seenWhy[line] = true
					why = append(why, line)
				}
			}
		}
	}
	if len(why) > 0 {
		fmt.Fprintf(w, "\nUnsupported:\n\n")
		for _, l := range why {
			fmt.Fprintf(w, "- %s\n", l)
		}
	}
	return nil
}

func formatUS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
