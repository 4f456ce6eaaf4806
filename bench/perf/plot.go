package perf

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	// Register the output formats draw.NewFormattedCanvas knows.
	_ "gonum.org/v1/plot/vg/vgimg"
	_ "gonum.org/v1/plot/vg/vgpdf"
	_ "gonum.org/v1/plot/vg/vgsvg"
)

// Plot draws bus bandwidth (left) and time (right) against size for every
// file, overlaid, into out; the format follows out's extension (.svg, .png,
// .pdf). Both axes are logarithmic. Files that share one case get legends
// naming the tool only; otherwise the case is part of each legend.
func Plot(out string, files []*File) error {
	if len(files) == 0 {
		return fmt.Errorf("perf: nothing to plot: give at least one result file")
	}
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(out)), ".")
	if format == "" {
		return fmt.Errorf("perf: plot file %q needs an extension (.svg, .png or .pdf)", out)
	}
	sameCase := true
	for _, f := range files {
		if f.Case() != files[0].Case() {
			sameCase = false
		}
	}
	title := "collective performance"
	if sameCase {
		title = files[0].Case()
	}
	bw := newLogPlot(title+": bus bandwidth", "busbw (GB/s)")
	lat := newLogPlot(title+": time", "time (us)")
	lines := 0
	for i, f := range files {
		var bwPts, latPts plotter.XYs
		for _, r := range f.Rows {
			if r.Size <= 0 {
				continue
			}
			if r.BusBW > 0 {
				bwPts = append(bwPts, plotter.XY{X: float64(r.Size), Y: r.BusBW})
			}
			if r.TimeUS > 0 {
				latPts = append(latPts, plotter.XY{X: float64(r.Size), Y: r.TimeUS})
			}
		}
		label := f.Label()
		if !sameCase {
			label += " " + f.Case()
		}
		for _, p := range []struct {
			pl  *plot.Plot
			pts plotter.XYs
		}{{bw, bwPts}, {lat, latPts}} {
			if len(p.pts) == 0 {
				continue
			}
			l, s, err := plotter.NewLinePoints(p.pts)
			if err != nil {
				return fmt.Errorf("perf: plotting %s: %w", label, err)
			}
			l.Color = plotutil.Color(i)
			l.Dashes = plotutil.Dashes(i / 7)
			s.Color = plotutil.Color(i)
			s.Shape = plotutil.Shape(i)
			p.pl.Add(l, s)
			p.pl.Legend.Add(label, l, s)
			lines++
		}
	}
	if lines == 0 {
		return fmt.Errorf("perf: the result files hold no row with a positive size and time to plot")
	}
	for _, p := range []*plot.Plot{bw, lat} {
		setSizeTicks(p)
	}
	const w, h = 26 * vg.Centimeter, 11 * vg.Centimeter
	c, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return fmt.Errorf("perf: plot %q: %w (use .svg, .png or .pdf)", out, err)
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3,
		PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	canvases := plot.Align([][]*plot.Plot{{bw, lat}}, tiles, draw.New(c))
	bw.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	fh, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(fh); err != nil {
		fh.Close()
		return fmt.Errorf("perf: writing plot %s: %w", out, err)
	}
	return fh.Close()
}

func newLogPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(10)
	p.X.Label.Text = "size (bytes)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	return p
}

// setSizeTicks labels the size axis at powers of two with readable units
// (8B, 1KiB, 64MiB), which plot's own log ticks (powers of ten) do not do.
func setSizeTicks(p *plot.Plot) {
	lo, hi := p.X.Min, p.X.Max
	if !(lo > 0) || !(hi >= lo) {
		return
	}
	var ticks plot.ConstantTicks
	start := math.Floor(math.Log2(lo))
	// Label at most about seven powers of two, so labels do not collide.
	every := max(1, int(math.Ceil((math.Log2(hi)-start+1)/7)))
	for e := start; math.Pow(2, e) <= hi*1.0001; e++ {
		v := math.Pow(2, e)
		label := ""
		if int(e-start)%every == 0 {
			label = FormatSize(int64(v))
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: label})
	}
	p.X.Tick.Marker = ticks
}
