package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// printReport prints one table per concurrency and size, a row per
// transport and load (gap or rate), load by load.
func printReport(w io.Writer, rep *Report, serverPID int) {
	loadCol, open := "gap", false
	for _, r := range rep.Results {
		if r.RatePerSec > 0 {
			loadCol, open = "rate", true
		}
	}
	fmt.Fprintf(w, "notnets bench: helloworld echo (Greeter.SayHello), server in another process (pid %d)\n", serverPID)
	fmt.Fprintf(w, "machine: %s, %s; calls interleaved in %d rounds\n", rep.Machine, rep.Go, rep.Rounds)
	var group []*Result
	flush := func() {
		if len(group) == 0 {
			return
		}
		r0 := group[0]
		per := "transport"
		if group[len(group)-1].load != r0.load {
			per += " and " + loadCol
		}
		fmt.Fprintf(w, "\npayload %s, %d caller(s) on one connection, %d calls per %s\n", sizeName(r0.Size), r0.Concurrency, r0.Calls, per)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "transport\t%s\tavg\t", loadCol)
		fmt.Fprintln(tw, "p50\tp99\tp99.9\tmax\tcalls/s\tMB/s\tcpu/call\t\tavg vs tcp\tp99.9 vs tcp\tcalls/s vs tcp\tcpu vs tcp\t")
		for _, r := range group {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.1f\t%s\t\t%s\t%s\t%s\t%s\t\n", r.Transport, r.load,
				us(r.AvgUS), us(r.P50US), us(r.P99US), us(r.P999US), us(r.MaxUS),
				r.CallsPerSec, r.MBPerSec, us(r.ClientCPUUS+r.ServerCPUUS),
				ratio(r.AvgRatio), ratio(r.P999Ratio), ratio(r.TputRatio), ratio(r.CPURatio))
		}
		tw.Flush()
		group = nil
	}
	for _, r := range rep.Results {
		if len(group) > 0 && (group[0].Size != r.Size || group[0].Concurrency != r.Concurrency) {
			flush()
		}
		group = append(group, r)
	}
	flush()
	fmt.Fprintln(w, "\nratios: grpc-tcp's latency or CPU over the transport's, or the transport's calls/s over grpc-tcp's (above 1x: better than grpc-tcp)")
	if open {
		fmt.Fprintln(w, "rate: open loop, calls scheduled at that rate; latency counted from each call's scheduled time")
	} else if len(rep.Results) > 0 {
		fmt.Fprintln(w, "gap: the caller busy-waits that long before each call; cpu/call excludes the busy-wait")
	}
	for _, r := range rep.Results {
		if r.Transport == "wake" {
			fmt.Fprintln(w, "wake: one-way futex wake-up latency measured by the woken server thread, not a call; its cpu/call is meaningless (the client spins for the answer)")
			break
		}
	}
}

func us(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fms", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fus", v)
	default:
		return fmt.Sprintf("%.2fus", v)
	}
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	if v >= 10 {
		return fmt.Sprintf("%.0fx", v)
	}
	return fmt.Sprintf("%.1fx", v)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
