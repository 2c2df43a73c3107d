package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotReport draws a latency CDF for every size, concurrency, load (gap
// or rate) and instance count; when several sizes were measured, latency
// against size; when several loads were, latency and CPU per call
// against the load for every size, concurrency and instance count; and
// when several instance counts were, calls per second against the count
// for every size, concurrency and load. It returns the files.
func plotReport(dir string, rep *Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	type key struct {
		size, conc, inst int
		load             load
	}
	groups := map[key][]*Result{}
	var order []key
	sizes := map[int]bool{}
	loads := map[load]bool{}
	counts := map[int]bool{}
	for _, r := range rep.Results {
		k := key{r.Size, r.Concurrency, r.Instances, r.load}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
		sizes[r.Size] = true
		loads[r.load] = true
		counts[r.Instances] = true
	}
	// instFile names an instance count in a file name, when several were
	// measured.
	instFile := func(n int) string {
		if len(counts) > 1 {
			return fmt.Sprintf("-i%d", n)
		}
		return ""
	}
	var files []string
	for _, k := range order {
		name := fmt.Sprintf("latency-cdf-%s-c%d", fileSize(k.size), k.conc)
		if len(loads) > 1 {
			name += "-" + loadFile(k.load)
		}
		name += instFile(k.inst)
		f := filepath.Join(dir, name+".png")
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
	if len(loads) > 1 {
		byPair := map[[3]int][]*Result{}
		var pairs [][3]int
		for _, r := range rep.Results {
			k := [3]int{r.Size, r.Concurrency, r.Instances}
			if byPair[k] == nil {
				pairs = append(pairs, k)
			}
			byPair[k] = append(byPair[k], r)
		}
		for _, k := range pairs {
			axis := "gap"
			if byPair[k][0].load.rate > 0 || byPair[k][len(byPair[k])-1].load.rate > 0 {
				axis = "rate"
			}
			suffix := fmt.Sprintf("vs-%s-%s-c%d%s.png", axis, fileSize(k[0]), k[1], instFile(k[2]))
			fl, fc := filepath.Join(dir, "latency-"+suffix), filepath.Join(dir, "cpu-"+suffix)
			if err := plotLoads(fl, byPair[k], false); err != nil {
				return nil, err
			}
			if err := plotLoads(fc, byPair[k], true); err != nil {
				return nil, err
			}
			files = append(files, fl, fc)
		}
	}
	if len(counts) > 1 {
		type key struct {
			size, conc int
			load       load
		}
		byLoad := map[key][]*Result{}
		var keys []key
		for _, r := range rep.Results {
			k := key{r.Size, r.Concurrency, r.load}
			if byLoad[k] == nil {
				keys = append(keys, k)
			}
			byLoad[k] = append(byLoad[k], r)
		}
		for _, k := range keys {
			name := fmt.Sprintf("calls-vs-instances-%s-c%d", fileSize(k.size), k.conc)
			if len(loads) > 1 {
				name += "-" + loadFile(k.load)
			}
			f := filepath.Join(dir, name+".png")
			if err := plotInstances(f, byLoad[k]); err != nil {
				return nil, err
			}
			files = append(files, f)
		}
	}
	return files, nil
}

// plotInstances draws, for results of one size, concurrency and load,
// every transport's calls per second against the instance count.
func plotInstances(file string, results []*Result) error {
	r0 := results[0]
	p := plot.New()
	p.Title.Text = fmt.Sprintf("calls per second against server instances, payload %s, %d caller(s)", sizeName(r0.Size), r0.Concurrency)
	switch {
	case r0.load.rate > 0:
		p.Title.Text += fmt.Sprintf(", open loop at %d calls/s", r0.load.rate)
	case r0.load.gap > 0:
		p.Title.Text += ", gap " + gapName(r0.load.gap)
	}
	p.X.Label.Text = "instances"
	p.Y.Label.Text = "calls per second"
	p.Y.Min = 0 // scaling reads as the slope from the origin
	var ticks []plot.Tick
	for _, r := range results {
		if !slices.ContainsFunc(ticks, func(t plot.Tick) bool { return t.Value == float64(r.Instances) }) {
			ticks = append(ticks, plot.Tick{Value: float64(r.Instances), Label: strconv.Itoa(r.Instances)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Add(plotter.NewGrid())
	byTransport := map[string]plotter.XYs{}
	var names []string
	for _, r := range results {
		if r.Calls == 0 || r.InstanceCalls == nil { // no instances behind it
			continue
		}
		if byTransport[r.label()] == nil {
			names = append(names, r.label())
		}
		byTransport[r.label()] = append(byTransport[r.label()], plotter.XY{X: float64(r.Instances), Y: r.CallsPerSec})
	}
	for i, name := range names {
		xys := byTransport[name]
		slices.SortFunc(xys, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		ls, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		ls.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
		ls.Width = vg.Points(1.5)
		pts.Shape = plotutil.Shape(i)
		p.Add(ls, pts)
		p.Legend.Add(name, ls, pts)
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}

// loadFile names a load in a file name: gap50us, rate2000.
func loadFile(l load) string {
	if l.rate > 0 {
		return fmt.Sprintf("rate%d", l.rate)
	}
	return "gap" + gapName(l.gap)
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
	switch {
	case r0.load.rate > 0:
		p.Title.Text += fmt.Sprintf(", open loop at %d calls/s", r0.load.rate)
	case r0.load.gap > 0:
		p.Title.Text += ", gap " + gapName(r0.load.gap)
	}
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
		p.Legend.Add(r.label(), line)
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
		if r.Concurrency != results[0].Concurrency || r.load != results[0].load || r.Instances != results[0].Instances {
			continue
		}
		if byTransport[r.label()] == nil {
			names = append(names, r.label())
		}
		byTransport[r.label()] = append(byTransport[r.label()], r)
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

// plotLoads draws, for results of one size and concurrency, every
// transport's p50 (solid) and p99.9 (dashed) latency against the gap or
// rate, or with cpu its CPU per call (client and server).
func plotLoads(file string, results []*Result, cpu bool) error {
	r0 := results[0]
	open := false
	var minX float64
	for _, r := range results {
		open = open || r.load.rate > 0
		if x := loadX(r.load); x > 0 && (minX == 0 || x < minX) {
			minX = x
		}
	}
	// A log scale has no 0: the closed loop without a gap is drawn a
	// decade below the smallest gap or rate (at most at 1).
	zero := 1.0
	if minX > 0 {
		zero = min(1, minX/10)
	}
	p := plot.New()
	what := "latency (solid: p50, dashed: p99.9)"
	p.Y.Label.Text = "latency (us, log scale)"
	if cpu {
		what = "CPU per call, client and server (client's busy-wait excluded)"
		p.Y.Label.Text = "CPU per call (us, log scale)"
	}
	p.Title.Text = fmt.Sprintf("%s, payload %s, %d caller(s)", what, sizeName(r0.Size), r0.Concurrency)
	if open {
		p.X.Label.Text = fmt.Sprintf("open loop: calls per second (log scale; closed loop drawn at %g)", zero)
	} else {
		p.X.Label.Text = fmt.Sprintf("busy-wait before each call (us, log scale; 0 drawn at %g us)", zero)
	}
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	byTransport := map[string][]*Result{}
	var names []string
	for _, r := range results {
		if byTransport[r.label()] == nil {
			names = append(names, r.label())
		}
		byTransport[r.label()] = append(byTransport[r.label()], r)
	}
	for i, name := range names {
		var solid, dashed plotter.XYs
		for _, r := range byTransport[name] {
			if r.Calls == 0 {
				continue
			}
			x := loadX(r.load)
			if x == 0 {
				x = zero
			}
			if cpu {
				solid = append(solid, plotter.XY{X: x, Y: max(r.ClientCPUUS+r.ServerCPUUS, 0.001)})
			} else {
				solid = append(solid, plotter.XY{X: x, Y: max(r.P50US, 0.001)})
				dashed = append(dashed, plotter.XY{X: x, Y: max(r.P999US, 0.001)})
			}
		}
		if len(solid) == 0 {
			continue
		}
		ls, pts, err := plotter.NewLinePoints(solid)
		if err != nil {
			return err
		}
		ls.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
		ls.Width = vg.Points(1.5)
		pts.Shape = plotutil.Shape(i)
		p.Add(ls, pts)
		p.Legend.Add(name, ls, pts)
		if len(dashed) > 0 {
			ld, err := plotter.NewLine(dashed)
			if err != nil {
				return err
			}
			ld.Color, ld.Width = plotutil.Color(i), vg.Points(1)
			ld.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(ld)
		}
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(8*vg.Inch, 5*vg.Inch, file)
}

// loadX is a load's place on the x axis: the gap in microseconds, or the
// rate in calls per second.
func loadX(l load) float64 {
	if l.rate > 0 {
		return float64(l.rate)
	}
	return float64(l.gap) / 1e3
}
