package main

import (
	"fmt"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotReport draws a latency CDF for every size and concurrency, and, when
// several sizes were measured, latency against size; it returns the files.
func plotReport(dir string, rep *Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	groups := map[[2]int][]*Result{}
	var order [][2]int
	sizes := map[int]bool{}
	for _, r := range rep.Results {
		k := [2]int{r.Size, r.Concurrency}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
		sizes[r.Size] = true
	}
	var files []string
	for _, k := range order {
		f := filepath.Join(dir, fmt.Sprintf("latency-cdf-%s-c%d.png", fileSize(k[0]), k[1]))
		if err := plotCDF(f, groups[k]); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	if len(sizes) > 1 {
		f := filepath.Join(dir, "latency-vs-size.png")
		if err := plotSizes(f, rep.Results); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

func fileSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func plotCDF(file string, results []*Result) error {
	p := plot.New()
	r0 := results[0]
	p.Title.Text = fmt.Sprintf("helloworld echo latency, payload %s, %d caller(s)", sizeName(r0.Size), r0.Concurrency)
	p.X.Label.Text = "latency (us, log scale)"
	p.Y.Label.Text = "fraction of calls at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	for i, r := range results {
		var pts plotter.XYs
		var seen int64
		total := r.hist.TotalCount()
		for _, b := range r.hist.Distribution() {
			if b.Count == 0 {
				continue
			}
			seen += b.Count
			pts = append(pts, plotter.XY{X: float64(max(b.To, 1)) / 1e3, Y: float64(seen) / float64(total)})
		}
		if len(pts) == 0 {
			continue
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(r.Transport, line)
	}
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(5)
	p.Legend.YOffs = vg.Points(30)
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}

func plotSizes(file string, results []*Result) error {
	p := plot.New()
	p.Title.Text = "helloworld echo latency against payload size (solid: average, dashed: p99)"
	p.X.Label.Text = "payload (bytes, log scale; 0 B drawn at 1 B)"
	p.Y.Label.Text = "latency (us, log scale)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	byTransport := map[string][]*Result{}
	var names []string
	for _, r := range results {
		if r.Concurrency != results[0].Concurrency {
			continue
		}
		if byTransport[r.Transport] == nil {
			names = append(names, r.Transport)
		}
		byTransport[r.Transport] = append(byTransport[r.Transport], r)
	}
	for i, name := range names {
		var avg, p99 plotter.XYs
		for _, r := range byTransport[name] {
			x := float64(max(r.Size, 1))
			avg = append(avg, plotter.XY{X: x, Y: r.AvgUS})
			p99 = append(p99, plotter.XY{X: x, Y: r.P99US})
		}
		la, err := plotter.NewLine(avg)
		if err != nil {
			return err
		}
		lp, err := plotter.NewLine(p99)
		if err != nil {
			return err
		}
		la.Color, lp.Color = plotutil.Color(i), plotutil.Color(i)
		la.Width, lp.Width = vg.Points(1.5), vg.Points(1)
		lp.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(la, lp)
		p.Legend.Add(name, la)
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}
